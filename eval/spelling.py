"""British -> American spellings for the English normalizer: a table of common words and their inflections.

Generated from stems so that "colour", "colours", "coloured", "colourful" all map; a generated form that is not a
real word does no harm (it never occurs). Words whose British form is also a different American word
(e.g. "practise"/"practice", "licence"/"license" as nouns) are mapped to the single American spelling.
"""
from __future__ import annotations

# -our -> -or
_OUR = ("colour", "favour", "honour", "labour", "neighbour", "behaviour", "humour", "flavour", "harbour",
        "rumour", "vapour", "odour", "vigour", "savour", "armour", "endeavour", "parlour", "splendour",
        "clamour", "glamour", "valour", "candour", "rancour", "tumour", "saviour")
_OUR_SUFFIXES = ("", "s", "ed", "ing", "ful", "less", "able", "ably", "ite", "ites", "er", "ers", "hood", "hoods",
                 "ly", "y")
# -ise -> -ize (verb stems without the final e)
_ISE = ("organis", "realis", "recognis", "apologis", "emphasis", "criticis", "minimis", "maximis", "prioritis",
        "summaris", "specialis", "categoris", "memoris", "civilis", "authoris", "finalis", "standardis",
        "normalis", "optimis", "utilis", "visualis", "modernis", "mobilis", "privatis", "legalis", "symbolis",
        "characteris", "customis", "familiaris", "globalis", "harmonis", "idealis", "jeopardis", "localis",
        "moralis", "neutralis", "patronis", "personalis", "scrutinis", "socialis", "stabilis", "sympathis",
        "synchronis", "theoris", "vandalis", "capitalis", "centralis", "colonis", "democratis", "dramatis",
        "economis", "energis", "fertilis", "generalis", "hospitalis", "immunis", "initialis", "italicis",
        "legitimis", "marginalis", "materialis", "mesmeris", "penalis", "polaris", "popularis", "publicis",
        "rationalis", "revitalis", "satiris", "sensitis", "sterilis", "subsidis", "tranquillis", "trivialis",
        "urbanis", "westernis", "agonis", "antagonis", "baptis", "fantasis", "galvanis", "hypnotis", "ostracis",
        "pasteuris", "terroris", "tyrannis", "womanis", "fossilis", "canonis", "alphabetis", "computeris")
_ISE_SUFFIXES = ("e", "es", "ed", "ing", "er", "ers", "ation", "ations", "able")
# -yse -> -yze
_YSE = ("analys", "paralys", "catalys", "electrolys", "hydrolys")
_YSE_SUFFIXES = ("e", "es", "ed", "ing", "er", "ers")
# -re -> -er
_RE = ("centre", "theatre", "metre", "litre", "fibre", "calibre", "sombre", "spectre", "meagre", "lustre",
       "sabre", "sceptre", "kilometre", "centimetre", "millimetre", "manoeuvre")
_RE_SUFFIXES = ("", "s", "d")
# doubled l before a suffix
_LL = ("travel", "cancel", "model", "label", "level", "fuel", "signal", "dial", "channel", "tunnel", "marvel",
       "quarrel", "equal", "total", "counsel", "shovel", "jewel", "duel", "rival", "pedal", "panel", "snorkel",
       "yodel", "funnel", "grovel", "revel", "label", "libel", "kennel", "bevel", "chisel", "cudgel", "enamel",
       "gambol", "gravel", "hovel", "refuel", "swivel", "tassel", "towel", "unravel")
_LL_SUFFIXES = ("led", "ling", "ler", "lers")

_WORDS = {
    "grey": "gray", "greys": "grays", "greyish": "grayish", "programme": "program", "programmes": "programs",
    "tyre": "tire", "tyres": "tires", "aluminium": "aluminum", "mould": "mold", "moulds": "molds",
    "mouldy": "moldy", "plough": "plow", "ploughs": "plows", "cheque": "check", "cheques": "checks",
    "kerb": "curb", "kerbs": "curbs", "jewellery": "jewelry", "ageing": "aging", "judgement": "judgment",
    "judgements": "judgments", "acknowledgement": "acknowledgment", "fulfil": "fulfill", "fulfils": "fulfills",
    "fulfilment": "fulfillment", "enrol": "enroll", "enrols": "enrolls", "enrolment": "enrollment",
    "skilful": "skillful", "wilful": "willful", "sceptic": "skeptic", "sceptical": "skeptical",
    "scepticism": "skepticism", "pyjamas": "pajamas", "moustache": "mustache", "cosy": "cozy",
    "draught": "draft", "draughts": "drafts", "gaol": "jail", "defence": "defense", "offence": "offense",
    "offences": "offenses", "licence": "license", "licences": "licenses", "pretence": "pretense",
    "practise": "practice", "practised": "practiced", "practising": "practicing", "catalogue": "catalog",
    "catalogues": "catalogs", "dialogue": "dialog", "dialogues": "dialogs", "analogue": "analog",
    "monologue": "monolog", "prologue": "prolog", "epilogue": "epilog", "encyclopaedia": "encyclopedia",
    "paediatric": "pediatric", "paediatrician": "pediatrician", "anaemia": "anemia", "anaesthetic": "anesthetic",
    "haemorrhage": "hemorrhage", "oestrogen": "estrogen", "foetus": "fetus", "orthopaedic": "orthopedic",
    "manoeuvres": "maneuvers", "manoeuvred": "maneuvered", "manoeuvring": "maneuvering", "storey": "story",
    "storeys": "stories", "doughnut": "donut", "doughnuts": "donuts", "artefact": "artifact",
    "artefacts": "artifacts", "cosier": "cozier", "speciality": "specialty", "specialities": "specialties",
    "sulphur": "sulfur", "woollen": "woolen", "instalment": "installment", "focussed": "focused",
    "focussing": "focusing",
    "carburettor": "carburetor", "gramme": "gram",
    "grammes": "grams", "likeable": "likable", "sizeable": "sizable", "liveable": "livable",
}


def _build() -> dict[str, str]:
    table: dict[str, str] = {}
    for stem in _OUR:
        us = stem[:-2] + "r"
        table.update({stem + s: us + s for s in _OUR_SUFFIXES})
    for stem in _ISE:
        table.update({stem + s: stem[:-1] + "z" + s for s in _ISE_SUFFIXES})
    for stem in _YSE:
        table.update({stem + s: stem[:-1] + "z" + s for s in _YSE_SUFFIXES})
    for word in _RE:
        us = word[:-2] + "er"
        table.update({word + s: us + s for s in _RE_SUFFIXES})
    for stem in _LL:
        table.update({stem + s: stem + s[1:] for s in _LL_SUFFIXES})
    table.update(_WORDS)
    # never map a word onto itself, and never map an American word (e.g. "emphasise" vs the noun "emphasis")
    return {k: v for k, v in table.items() if k != v}


BRITISH_TO_AMERICAN: dict[str, str] = _build()
