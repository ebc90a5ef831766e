"""The prompt around the audio block, and the chain-of-thought answer split."""
import pytest

from lm.prompt import PromptTokens, build_prompt, instruction, language_name, split_translation
from lm.tokenizer import Tokenizer


def test_language_names():
    assert language_name("es") == "Spanish" and language_name("EN") == "English"
    assert language_name("spanish") == "Spanish" and language_name("Klingon") == "Klingon"
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        language_name("xx")


def test_instructions():
    assert instruction("transcribe", "en") == "Transcribe the following speech segment in English:"
    assert instruction("transcribe") == "Transcribe the following speech segment:"
    assert instruction("translate", "es", "en") == (
        "Transcribe the following speech segment in Spanish, then translate it into English:")
    with pytest.raises(ValueError, match="target language"):
        instruction("translate", "es")
    with pytest.raises(ValueError, match="unknown task"):
        instruction("summarize")


def test_prompt_layout_matches_the_reference_template(random_checkpoint):
    """<bos><start_of_turn>user\\n{request}\\n\\n<start_of_audio>[slots]<end_of_audio>\\n\\n<end_of_turn>\\n
    <start_of_turn>model\\n: the chat template's text, with the processor's audio expansion, tokenized."""
    tok = Tokenizer.from_dir(random_checkpoint)
    ids = PromptTokens(bos=tok.bos_id, start_of_turn=tok.token_id("<start_of_turn>"),
                       end_of_turn=tok.token_id("<end_of_turn>"), start_of_audio=tok.token_id("<start_of_audio>"),
                       end_of_audio=tok.token_id("<end_of_audio>"), audio_soft=tok.token_id("<audio_soft_token>"))
    request = instruction("transcribe", "en")
    prompt = build_prompt(tok, ids, request, 5)
    assert prompt.ids[:2] == [ids.bos, ids.start_of_turn]
    assert prompt.ids[prompt.audio_start - 1] == ids.start_of_audio
    assert prompt.ids[prompt.audio_start:prompt.audio_start + 5] == [ids.audio_soft] * 5
    assert prompt.ids[prompt.audio_start + 5] == ids.end_of_audio
    # The whole sequence is what tokenizing the rendered template gives.
    text = ("<start_of_turn>user\n" + request + "\n\n<start_of_audio>" + "<audio_soft_token>" * 5
            + "<end_of_audio>\n\n<end_of_turn>\n<start_of_turn>model\n")
    assert prompt.ids == [ids.bos] + tok.encode(text)
    assert tok.decode(prompt.ids[prompt.audio_start + 6:], skip_special=False).endswith("model\n")


@pytest.mark.parametrize("answer, expected", [
    ("Hola amigo.\n\nHello friend.", ("Hola amigo.", "Hello friend.")),
    ("Spanish: Hola amigo.\nEnglish: Hello friend.", ("Hola amigo.", "Hello friend.")),
    ("**Transcription:** Hola\n\n**Translation:** Hello", ("Hola", "Hello")),
    ("Hola amigo.", ("Hola amigo.", "")),
    ("Note: this stays: here\n\nCeci reste", ("Note: this stays: here", "Ceci reste")),
    ("  \n", ("", "")),
])
def test_split_translation(answer, expected):
    assert split_translation(answer) == expected
