"""Document text building: fields, templates, whole-source flattening and the token budget."""
from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from rerank.text import MAX_DEPTH, TextConfig, build_document_text, pieces, render_value, truncate_tokens


def text(source, **config) -> str:
    return build_document_text(source, TextConfig(**config))


# --- config -----------------------------------------------------------------------------------------------------


def test_defaults_are_whole_source_and_512_tokens():
    config = TextConfig()
    assert config.fields is None and config.template is None and config.max_tokens == 512
    assert config.source_fields() is None


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="extra"):
        TextConfig(feilds=["title"])


def test_fields_and_template_together_are_rejected():
    with pytest.raises(ValidationError, match="not both"):
        TextConfig(fields=["title"], template="{title}")


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_non_positive_budget_is_rejected(max_tokens):
    with pytest.raises(ValidationError, match="max_tokens"):
        TextConfig(max_tokens=max_tokens)


def test_empty_fields_list_is_rejected():
    with pytest.raises(ValidationError, match="at least one field"):
        TextConfig(fields=[])


@pytest.mark.parametrize("path", ["", "  ", "title.", ".title", "a..b", " title"])
def test_malformed_field_path_is_rejected(path):
    with pytest.raises(ValidationError, match="text.fields"):
        TextConfig(fields=[path])


@pytest.mark.parametrize(
    "template, message",
    [
        ("{title", "not closed"),
        ("{title\n}", "not closed"),
        ("title}", "single '}'"),
        ("{a{b}}", "not closed"),
        ("{}", "empty field path"),
        ("{a..b}", "empty part"),
        ("no placeholders {{here}}", "no {field} placeholder"),
    ],
)
def test_bad_template_is_rejected_at_load(template, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        TextConfig(template=template)


def test_source_fields_lists_fields_without_duplicates():
    assert TextConfig(fields=["title", "authors.name", "title"]).source_fields() == ["title", "authors.name"]


def test_source_fields_lists_template_placeholders_in_first_use_order():
    config = TextConfig(template="{ title }: {abstract}\n{{literal}} {title} {authors.name}")
    assert config.source_fields() == ["title", "abstract", "authors.name"]


# --- fields -----------------------------------------------------------------------------------------------------


def test_fields_are_joined_by_newline_in_configured_order():
    assert text({"abstract": "B", "title": "A"}, fields=["title", "abstract"]) == "A\nB"


def test_fields_skip_missing_null_and_empty_values():
    source = {"title": "A", "empty": "", "blank": "  ", "none": None, "list": [], "obj": {}, "body": "B"}
    assert text(source, fields=["title", "missing", "empty", "blank", "none", "list", "obj", "body"]) == "A\nB"


def test_dot_path_walks_nested_objects():
    assert text({"author": {"name": {"first": "Ada"}}}, fields=["author.name.first"]) == "Ada"


def test_dot_path_through_array_of_objects_collects_each_element():
    source = {"authors": [{"name": "A"}, {"name": "B"}, {"other": 1}, {"name": None}]}
    assert text(source, fields=["authors.name"]) == "A, B"


def test_dot_path_through_nested_arrays_flattens_them():
    source = {"sections": [[{"title": "S1"}], {"title": ["S2", "S3"]}]}
    assert text(source, fields=["sections.title"]) == "S1, S2, S3"


def test_literal_dotted_key_is_found_like_elasticsearch():
    assert text({"a.b": "flat"}, fields=["a.b"]) == "flat"
    assert text({"meta": {"dc.title": "T"}}, fields=["meta.dc.title"]) == "T"


def test_nested_and_literal_dotted_keys_are_both_collected():
    assert text({"a.b": 1, "a": {"b": 2}}, fields=["a.b"]) == "2, 1"


def test_path_into_a_scalar_finds_nothing():
    assert text({"title": "T"}, fields=["title.sub", "title"]) == "T"


# --- rendering a value ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("  keep  \"as is\"\n", "  keep  \"as is\"\n"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (3.5, "3.5"),
        (-0.25, "-0.25"),
        (None, ""),
        (["a", 1, None, "", False], "a, 1, false"),
        ({"k": "v", "k2": 2}, "k: v; k2: 2"),
        ({"k": {"inner": 1}, "skip": None}, "k.inner: 1"),
        ([{"name": "A", "age": 3}, {"name": "B"}], "name: A; age: 3, name: B"),
    ],
)
def test_render_value(value, expected):
    assert render_value(value) == expected


def test_field_holding_an_object_renders_key_value_pairs():
    assert text({"meta": {"year": 2020, "venue": "X"}}, fields=["meta"]) == "year: 2020; venue: X"


def test_huge_int_that_str_refuses_renders_empty_instead_of_raising():
    assert render_value(10**5000) == ""


# --- template ---------------------------------------------------------------------------------------------------


def test_template_substitutes_dot_paths():
    source = {"title": "T", "authors": [{"name": "A"}, {"name": "B"}]}
    assert text(source, template="{title} by {authors.name}") == "T by A, B"


def test_template_missing_field_renders_empty_in_line():
    assert text({"title": "T"}, template="{title} ({year})") == "T ()"


def test_template_double_braces_are_literal():
    assert text({"x": "1"}, template="{{x}} = {x} }}") == "{x} = 1 }"


def test_template_line_left_blank_by_missing_field_is_removed():
    assert text({"title": "T", "body": "B"}, template="{title}\n{abstract}\n{body}") == "T\nB"


def test_template_keeps_own_blank_lines_but_missing_field_adds_none():
    template = "{title}\n\n{abstract}\n\n{body}"
    assert text({"title": "T", "abstract": "A", "body": "B"}, template=template) == "T\n\nA\n\nB"
    assert text({"title": "T", "body": "B"}, template=template) == "T\n\nB"


def test_template_drops_leading_and_trailing_blank_lines_from_missing_fields():
    assert text({"body": "B"}, template="{title}\n\n{body}\n{footer}") == "B"


def test_template_line_with_literal_text_is_kept_when_field_missing():
    assert text({"title": "T"}, template="{title}\nAbstract: {abstract}") == "T\nAbstract: "


def test_template_with_all_fields_missing_is_empty():
    assert text({}, template="{title}\n{body}") == ""


# --- whole-source flattening ------------------------------------------------------------------------------------


def test_default_flattens_to_key_value_lines_in_source_order():
    assert text({"title": "T", "abstract": "A"}) == "title: T\nabstract: A"


def test_default_nested_keys_become_dotted_paths():
    assert text({"author": {"name": "X", "org": {"city": "Y"}}}) == "author.name: X\nauthor.org.city: Y"


def test_default_scalar_arrays_are_comma_joined():
    assert text({"tags": ["a", "b", 3]}) == "tags: a, b, 3"


def test_default_arrays_of_objects_are_flattened_element_by_element():
    source = {"authors": [{"name": "A", "aff": "X"}, {"name": "B"}]}
    assert text(source) == "authors.name: A\nauthors.aff: X\nauthors.name: B"


def test_default_mixed_array_keeps_scalars_and_objects_in_order():
    assert text({"k": ["a", {"x": 1}, "b"]}) == "k: a\nk.x: 1\nk: b"


def test_default_skips_null_and_empty_values():
    source = {"a": None, "b": "", "c": [], "d": {}, "e": [None, ""], "f": {"g": None}, "h": "kept"}
    assert text(source) == "h: kept"


def test_default_renders_numbers_and_booleans_as_json():
    assert text({"n": 3.5, "i": 7, "flag": True, "off": False}) == "n: 3.5\ni: 7\nflag: true\noff: false"


def test_default_strings_are_verbatim_without_json_quoting():
    assert text({"q": 'say "hi" \\ ok'}) == 'q: say "hi" \\ ok'


# --- odd sources ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"fields": ["title"]}, {"template": "{title}"}])
@pytest.mark.parametrize("source", [None, {}, [], 42, object()])
def test_odd_sources_never_raise(source, config):
    assert isinstance(text(source, **config), str)


def test_none_source_is_empty_text():
    assert text(None) == "" and text(None, fields=["a"]) == "" and text(None, template="{a}") == ""


def test_non_dict_string_source_is_its_own_text():
    assert text("just text") == "just text"


def test_deep_nesting_is_capped_instead_of_recursing_forever():
    deep: dict = {"leaf": "top"}
    for _ in range(10_000):
        deep = {"x": deep}
    assert text(deep) == ""
    assert text({"shallow": "S", "deep": deep}) == "shallow: S"


def test_nesting_within_the_cap_is_kept():
    source: dict = {"leaf": "v"}
    for _ in range(MAX_DEPTH - 2):
        source = {"x": source}
    assert text(source).endswith(".leaf: v")


def test_self_referencing_source_does_not_hang():
    loop: dict = {"name": "n"}
    loop["self"] = loop
    loop_list: list = ["a"]
    loop_list.append(loop_list)
    assert text(loop).startswith("name: n\nself.name: n")
    assert text({"l": loop_list}, fields=["l"]).startswith("a, a")


def test_unicode_is_preserved():
    source = {"标题": "深度学习", "عنوان": "تعلم عميق", "emoji": "🚀 launch 👩‍🔬"}
    assert text(source) == "标题: 深度学习\nعنوان: تعلم عميق\nemoji: 🚀 launch 👩‍🔬"


# --- token budget -----------------------------------------------------------------------------------------------


def test_budget_cuts_right_after_the_nth_piece_keeping_original_spacing():
    assert truncate_tokens("one,  two three", 3) == "one,  two"
    assert truncate_tokens("one,  two three", 2) == "one,"


def test_budget_counts_words_and_punctuation_marks():
    assert truncate_tokens("a-b c", 3) == "a-b"


def test_text_within_budget_is_unchanged():
    assert truncate_tokens("  a b c  ", 3) == "  a b c  "
    assert truncate_tokens("short", 512) == "short"


def test_budget_applies_to_built_text():
    assert text({"title": "a b c d"}, max_tokens=4) == "title: a b"
    assert text({"title": "a b c d"}, fields=["title"], max_tokens=2) == "a b"


def test_budget_counts_each_cjk_character_so_unspaced_scripts_are_cut():
    assert truncate_tokens("深度学习模型", 2) == "深度"
    assert truncate_tokens("ภาษาไทย", 3) == "ภาษ"
    assert truncate_tokens("see 東京", 2) == "see 東"


def test_combining_marks_count_with_their_letter_not_as_pieces_of_their_own():
    # Devanagari vowel signs and viramas, Arabic harakat, Thai vowel and tone marks are Unicode marks, not letters:
    # counted alone they made the budget cut text the model still reads (one token per word or syllable).
    assert truncate_tokens("नमस्ते दुनिया भारत", 2) == "नमस्ते दुनिया"
    assert truncate_tokens("مَرْحَبًا بِكُمْ هنا", 2) == "مَرْحَبًا بِكُمْ"
    assert truncate_tokens("ที่นี่ครับ", 2) == "ที่นี่"  # ที่ and นี่: each consonant keeps its marks
    assert truncate_tokens("cafe\u0301 au lait", 2) == "cafe\u0301 au"  # a decomposed é stays in its word


def test_budget_cuts_an_unbroken_run_of_letters():
    assert truncate_tokens("x" * 100, 2) == "x" * 64


def test_budget_is_unicode_safe_for_emoji_and_arabic():
    assert truncate_tokens("🚀🚀🚀", 2) == "🚀🚀"
    assert truncate_tokens("تعلم عميق جدا", 2) == "تعلم عميق"


def test_five_megabyte_document_is_cut_to_budget():
    words = "lorem ipsum, dolor "
    huge = {"body": words * (5_000_000 // len(words))}
    out = text(huge, fields=["body"], max_tokens=512)
    # 4 pieces per repeat ("lorem", "ipsum", ",", "dolor"): 128 repeats exactly, ending on "dolor".
    assert out == (words * 128).rstrip()
    assert len(out) == len(words) * 128 - 1


def test_source_with_many_keys_is_cut_to_budget_like_the_full_flattening():
    source = {f"k{i}": {"v": [i, "x"]} for i in range(5_000)}
    full = "\n".join(f"k{i}.v: {i}, x" for i in range(5_000))
    assert text(source, max_tokens=100) == truncate_tokens(full, 100)
    assert text(source, max_tokens=100).endswith("k13.v: 13, x\nk14.")  # 7 pieces a line: 14 lines + 2


def test_many_fields_are_cut_to_budget():
    source = {f"f{i}": "w" for i in range(10)}
    assert text(source, fields=[f"f{i}" for i in range(10)], max_tokens=3) == "w\nw\nw"


def test_ascii_text_is_cut_into_the_same_pieces_as_any_other_text():
    ascii_text = "Deep-learning (v2.1) models: 42 layers, x_y_z & more... " + "w" * 40
    spans = [m.span() for m in pieces(ascii_text)]
    assert spans == [m.span() for m in pieces(ascii_text + " é")][:-1]
