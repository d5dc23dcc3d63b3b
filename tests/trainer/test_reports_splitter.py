"""Sentence splitting of radiology reports: sections, numbered lists, abbreviations, decimals, wrapped lines."""

from trainer.reports.splitter import normalise_for_match, split_sections, split_sentences


def _texts(report):
    return [(s.section, s.text) for s in split_sentences(report)]


def test_sections_with_and_without_text_on_the_heading_line():
    rep = "CLINICAL HISTORY: Pain.\nTechnique:\nCT abdomen.\nCOMPARISON: None.\nFINDINGS\nNo ascites.\nIMPRESSION: Normal."
    assert [s for s, _, _ in split_sections(rep)] == ["indication", "technique", "comparison", "findings", "impression"]
    assert _texts(rep) == [("indication", "Pain."), ("technique", "CT abdomen."), ("comparison", "None."),
                           ("findings", "No ascites."), ("impression", "Normal.")]


def test_text_before_any_heading_is_body():
    assert _texts("No ascites. The liver is normal.") == [("body", "No ascites."), ("body", "The liver is normal.")]


def test_abbreviations_decimals_and_units_do_not_split():
    rep = ("FINDINGS: A 2.3 cm. hypodense lesion, approx. 3 cm from the dome, e.g. segment 7, vs. a cyst. "
           "The spleen measures 14 cm. The pancreas is normal.")
    assert [t for _, t in _texts(rep)] == [
        "A 2.3 cm. hypodense lesion, approx. 3 cm from the dome, e.g. segment 7, vs. a cyst.",
        "The spleen measures 14 cm.",
        "The pancreas is normal.",
    ]


def test_numbered_impression_items_inline_and_on_lines():
    rep = "IMPRESSION:\n1. Hepatomegaly.\n2) Small renal cyst measuring 1.5 cm.\n3. No ascites. 4. Gallstones."
    assert [t for _, t in _texts(rep)] == ["Hepatomegaly.", "Small renal cyst measuring 1.5 cm.", "No ascites.",
                                          "Gallstones."]


def test_bullets_semicolons_and_wrapped_lines():
    rep = "FINDINGS:\n- No hydronephrosis; the bladder is normal.\n- The pancreas is\natrophic.\n* Hiatal hernia"
    assert [t for _, t in _texts(rep)] == ["No hydronephrosis", "the bladder is normal.", "The pancreas is atrophic.",
                                          "Hiatal hernia"]


def test_offsets_point_into_the_report_and_subheadings_are_kept():
    rep = "FINDINGS:\nLIVER: Normal size. No focal lesion.\nSPLEEN: Normal."
    sents = split_sentences(rep)
    for s in sents:
        assert " ".join(rep[s.start:s.end].split()) == s.text
    assert [s.heading for s in sents] == ["LIVER", "LIVER", "SPLEEN"]


def test_separators_and_empty_text_give_no_sentences():
    assert split_sentences("") == []
    assert split_sentences("FINDINGS:\n---\n***\n") == []


def test_normalise_for_match():
    assert normalise_for_match(" 2.  The Liver  is normal. ") == "the liver is normal"


def test_bare_subheading_line_names_the_block_below_it():
    rep = "FINDINGS:\nGALLBLADDER:\nDistended.\nNo stones.\n\nThe spleen is normal.\nIMPRESSION: 1. Liver: normal."
    got = [(s.heading, s.text) for s in split_sentences(rep)]
    assert got == [("GALLBLADDER", "Distended."), ("GALLBLADDER", "No stones."), ("", "The spleen is normal."),
                   ("Liver", "normal.")]
