"""Normalizer rule tables (docs/eval.md lists the rules)."""
import pytest

from eval.normalize import BasicNormalizer, EnglishNormalizer, get_normalizer, normalizer_for_language

ENGLISH = [
    # case, punctuation, whitespace
    ("Hello, World!", "hello world"),
    ("  multiple   spaces\tand\ntabs ", "multiple spaces and tabs"),
    ("It’s “quoted” text — really…", "it is quoted text really"),
    ("e.g. the U.S.A.", "e g the u s a"),
    ("rock 'n' roll", "rock n roll"),
    # bracketed / parenthesized text and fillers
    ("[NOISE] hello (laughs) there <unk>", "hello there"),
    ("Um, I think, uh, it's fine.", "i think it is fine"),
    ("Hmm... mhm.", ""),
    ("umbrella hummus", "umbrella hummus"),  # fillers only as whole words
    # contractions
    ("I won't go.", "i will not go"),
    ("You can't stop.", "you can not stop"),
    ("Let's go, y'all!", "let us go you all"),
    ("They're here and we've left.", "they are here and we have left"),
    ("I'd been there; she's gone.", "i had been there she has gone"),
    ("He'll say I'm wrong.", "he will say i am wrong"),
    ("I'm gonna wanna gotta", "i am going to want to got to"),
    ("He's got it.", "he has got it"),
    ("I'd like that, wouldn't you?", "i would like that would not you"),
    ("don 't", "do not"),
    # titles
    ("Mr. Smith and Mrs. Jones met Dr. Brown.", "mister smith and missus jones met doctor brown"),
    ("St. Patrick's Day", "saint patrick is day"),
    ("Jr. and Sr.", "junior and senior"),
    ("Prof. Lee and Capt. Hook", "professor lee and captain hook"),
    # British -> American
    ("The colour of the centre.", "the color of the center"),
    ("We organised the catalogue.", "we organized the catalog"),
    ("She travelled to the theatre", "she traveled to the theater"),
    ("MAXIMISE the FLAVOURS", "maximize the flavors"),
    ("grey tyres, analysed", "gray tires analyzed"),
    # diacritics
    ("Café naïve résumé", "cafe naive resume"),
    # numbers
    ("twenty one", "21"),
    ("One hundred and five dogs.", "105 dogs"),
    ("two thousand and nine", "2009"),
    ("twelve thousand three hundred forty-five", "12345"),
    ("In nineteen ninety nine.", "in 1999"),
    ("twenty twenty one", "2021"),
    ("A hundred people", "100 people"),
    ("two point five million", "2500000"),
    ("5 million", "5000000"),
    ("Three and a half hours", "3.5 hours"),
    ("He said 3.14 is pi.", "he said 3.14 is pi"),
    ("two three", "2 3"),
    # ordinals
    ("He came twenty-first.", "he came 21st"),
    ("one hundred and first", "101st"),
    ("the third", "the 3rd"),
    ("The 1st of May", "the 1st of may"),
    ("The second time", "the second time"),  # a lone "second" is the unit of time
    # "one" kept as a word, 1 read as one
    ("one of them", "one of them"),
    ("1 of them", "one of them"),
    # percent and currency
    ("Ten percent of 1,000 is 100.", "10% of 1000 is 100"),
    ("five per cent", "5%"),
    ("Q3 results: 45% up", "q 3 results 45% up"),
    ("It costs five dollars and fifty cents.", "it costs $5.50"),
    ("one dollar", "$1"),
    ("twenty five cents", "¢25"),
    ("$20 bill", "$20 bill"),
    ("the 1990s", "the 1990s"),
]


@pytest.mark.parametrize("text,expected", ENGLISH)
def test_english(text, expected):
    assert EnglishNormalizer()(text) == expected


def test_english_table_size_and_idempotence():
    assert len(ENGLISH) >= 40
    n = EnglishNormalizer()
    for text, expected in ENGLISH:
        assert n(expected) == expected, f"normalizing {expected!r} again changed it"


BASIC = [
    ("Hello, World!", "hello world"),
    ("ÉCOLE Élémentaire", "école élémentaire"),
    ("«Bonjour», dit-il.", "bonjour dit il"),
    ("¿Qué tal? ¡Bien!", "qué tal bien"),
    ("Straße", "straße"),
    ("[música] hola (risas) amigos", "hola amigos"),
    ("l'homme d'affaires", "l homme d affaires"),
    ("ｆｕｌｌｗｉｄｔｈ　ＡＢＣ", "fullwidth abc"),  # NFKC folds width
    ("ﬁnance", "finance"),  # NFKC ligature
    ("50% + 20 € = ?", "50 20"),  # % + € = are symbols/punctuation
    ("你好，世界。", "你好 世界"),
    ("こんにちは、世界！", "こんにちは 世界"),
    ("Привет, мир!", "привет мир"),
    ("Γειά σου Κόσμε", "γειά σου κόσμε"),
    ("नमस्ते दुनिया।", "नमस्ते दुनिया"),  # vowel signs (marks) are kept
    ("สวัสดีครับ", "สวัสดีครับ"),
    ("مرحبا، بالعالم؟", "مرحبا بالعالم"),
    ("  a\t b \n c ", "a b c"),
    ("emoji 😀 here", "emoji here"),
    ("quote \"this\" & that", "quote this that"),
    ("3.14 and 1,000", "3 14 and 1 000"),
]
BASIC_NO_DIACRITICS = [
    ("Café naïve résumé", "cafe naive resume"),
    ("Ærøskøbing Łódź", "aeroskobing lodz"),
    ("¿Qué tal, señor?", "que tal senor"),
    ("Straße", "strasse"),
]


@pytest.mark.parametrize("text,expected", BASIC)
def test_basic(text, expected):
    assert BasicNormalizer()(text) == expected


@pytest.mark.parametrize("text,expected", BASIC_NO_DIACRITICS)
def test_basic_without_diacritics(text, expected):
    assert BasicNormalizer(remove_diacritics=True)(text) == expected


def test_table_sizes_and_lookup():
    assert len(BASIC) + len(BASIC_NO_DIACRITICS) >= 20
    assert get_normalizer("none")("Keep, As Is!") == "Keep, As Is!"
    assert isinstance(get_normalizer("english"), EnglishNormalizer)
    assert isinstance(normalizer_for_language("en-US"), EnglishNormalizer)
    assert isinstance(normalizer_for_language("fr"), BasicNormalizer)
    with pytest.raises(ValueError, match="unknown normalizer 'klingon'"):
        get_normalizer("klingon")
