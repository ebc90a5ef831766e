"""The Asterisk prompts converter: parsing rules always; the real set only when the packages are installed."""
import soundfile as sf
import pytest

from eval import asterisk
from eval.datasets import read_manifest


def test_read_prompts_rules(tmp_path):
    path = tmp_path / "core-sounds-xx.txt"
    path.write_text("\ufeff; a comment\n\n"
                    "activated: Activated.\n"
                    "beep: [this is a simple beep tone]\n"
                    "confbridge-join: (beep)\n"
                    "muted: Voice off. (You are now muted.)\n"
                    "digits/0: cero\n"
                    "digits/0: diez\n"
                    "digits/1: uno\n"
                    "digits/1: uno\n"
                    "empty:\n"
                    "spaced:   several    words  \n", encoding="utf-8")
    assert asterisk.read_prompts(path) == {"activated": "Activated.", "digits/1": "uno", "spaced": "several words"}


needs_packages = pytest.mark.skipif(
    not asterisk.installed(), reason="asterisk-core-sounds-{en,es,fr,it}(-wav) Debian packages not installed")


@needs_packages
def test_installed_prompts_to_manifests(tmp_path):
    written = asterisk.write_manifests(tmp_path)
    assert sorted(written) == ["asr_en", "asr_es", "asr_fr", "asr_it", "ast_es_en", "ast_fr_en", "ast_it_en"]
    en = {u.id: u for u in read_manifest(written["asr_en"])}
    assert len(en) > 400 and en["en/activated"].text == "Activated."
    assert en["en/digits/0"].text == "zero"
    fr_en = read_manifest(written["ast_fr_en"])
    assert len(fr_en) > 400
    for u in fr_en:
        assert (u.language, u.target_language) == ("fr", "en")
        assert u.translation == en[u.id.replace("fr/", "en/", 1)].text
    info = sf.info(str(fr_en[0].audio))
    assert info.frames > 0 and info.channels == 1
    es = {u.id: u.text for u in read_manifest(written["asr_es"])}
    assert "es/digits/0" not in es  # listed twice with different texts in the Spanish transcript file
