"""PILL's task: the description–AIG data set (determinism, disjoint splits, descriptions true to the AIGs), the
hard-negative tasks, a tiny end-to-end run of every fusion, and the command's one-line errors."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from circuitml.datasets import FAMILIES, CircuitDataset
from circuitml.tasks.pill import data as pill_data
from circuitml.tasks.pill.data import (
    PILL_FILE,
    PillDataConfig,
    build_pill_dataset,
    choice_items,
    load_pill_designs,
    matching_pairs,
    plan_pill_designs,
)
from circuitml.tasks.pill.descriptions import DESCRIBED_FAMILIES, attributes, describe, num_templates

from circuitml.errors import ConfigError, DatasetError

transformers = pytest.importorskip("transformers")

TINY = PillDataConfig(
    families=("adder_rc", "decoder", "mult_booth", "parity", "mux"), variants=2, max_width=6
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pill")
    designs = build_pill_dataset(root, TINY, progress=False)
    return root, designs


# ------------------------------------------------------------------------------------------ descriptions
@pytest.mark.parametrize("family", DESCRIBED_FAMILIES)
def test_descriptions_parse_every_family_and_tell_attribute_sets_apart(family) -> None:
    fam = FAMILIES[family]
    by_text: dict[str, str] = {}
    for width in fam.widths[:4]:
        for seed in range(12):
            attrs = attributes(family, fam.generate(min(width, fam.max_width), seed)[1])
            if "width" in attrs and family not in ("barrel_shifter", "mux"):
                assert attrs["width"] == min(width, fam.max_width)
            key = json.dumps(attrs, sort_keys=True)
            for t in range(num_templates(family)):
                text = describe(family, attrs, t)
                # one description never fits two attribute sets: the matching task has a single right answer
                assert by_text.setdefault(text, key) == key, (text, key, by_text[text])


def test_an_unknown_family_or_header_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="no descriptions"):
        attributes("random_control", "// Random control logic: 4 inputs")
    with pytest.raises(DatasetError, match="adder_rc header"):
        attributes("adder_rc", "// a 4-bit something else\nmodule m; endmodule")


def test_descriptions_match_the_generator_parameters_and_the_synthesized_aig(tiny_data) -> None:
    root, designs = tiny_data
    ds = CircuitDataset(root)
    recs = {r["id"]: r for r in ds.records}
    for d in designs:
        a, rec = d.attrs, recs[d.id]
        if d.family == "adder_rc":
            assert rec["num_pis"] == 2 * a["width"] + a["carry_in"] and rec["num_pos"] == a["width"] + 1
            assert ("with carry-in" in d.descriptions[0]) == a["carry_in"]
        elif d.family == "decoder":
            assert rec["num_pis"] == a["width"] + a["enable"] and rec["num_pos"] == 1 << a["width"]
            assert d.descriptions[0].startswith(f"a {a['width']}-to-{1 << a['width']} decoder")
        elif d.family == "mult_booth":
            assert rec["num_pos"] == (2 if a["full_product"] else 1) * a["width"]
            assert f"giving {rec['num_pos']} product bits" in d.descriptions[1]
        elif d.family == "parity":
            assert rec["num_pis"] == a["width"] and rec["num_pos"] == 1
            assert ("odd" in d.descriptions[0]) == a["odd"]
        elif d.family == "mux":
            assert rec["num_pis"] == a["inputs"] * a["width"] + math.ceil(math.log2(a["inputs"]))
            assert rec["num_pos"] == a["width"]
        assert d.width == a.get("width", d.width) or d.family == "mux"


# ------------------------------------------------------------------------------------------ the data set
def test_the_data_set_is_deterministic_and_cached(tiny_data, monkeypatch) -> None:
    root, designs = tiny_data
    assert [(s.module, a, sp) for s, a, sp in plan_pill_designs(TINY)] == [
        (s.module, a, sp) for s, a, sp in plan_pill_designs(TINY)
    ]
    assert load_pill_designs(root) == designs
    # a second build with the same settings synthesizes nothing
    monkeypatch.setattr(pill_data, "build_dataset", lambda *a, **k: pytest.fail("rebuilt"))
    assert build_pill_dataset(root, TINY, progress=False) == designs
    other = PillDataConfig(families=TINY.families, variants=2, max_width=6, seed=1)
    assert [s.seed for s, _, _ in plan_pill_designs(other)] != [d.seed for d in designs]


def test_splits_are_disjoint_in_designs_widths_and_seeds(tiny_data) -> None:
    root, designs = tiny_data
    ds = CircuitDataset(root)
    text = {
        r["id"]: re.sub(r"\b" + r["top"] + r"\b", "M", (root / r["verilog"]).read_text()) for r in ds.records
    }
    splits = {s: [d for d in designs if d.split == s] for s in ("train", "test_seed", "test_width")}
    assert all(splits.values())
    for a, b in (("train", "test_seed"), ("train", "test_width"), ("test_seed", "test_width")):
        assert not {text[d.id] for d in splits[a]} & {text[d.id] for d in splits[b]}
    for fam in TINY.families:
        train = [d for d in splits["train"] if d.family == fam]
        assert not {d.width for d in train} & {d.width for d in splits["test_width"] if d.family == fam}
        assert not {d.seed for d in train} & {d.seed for d in splits["test_seed"] if d.family == fam}


def test_bad_settings_and_a_missing_file_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="variants"):
        plan_pill_designs(PillDataConfig(variants=1))
    with pytest.raises(ConfigError, match="random_control"):
        plan_pill_designs(PillDataConfig(families=("random_control",)))
    with pytest.raises(ConfigError, match="no widths"):
        plan_pill_designs(PillDataConfig(families=("adder_rc",), max_width=1))
    with pytest.raises(DatasetError, match="pill.json: missing"):
        load_pill_designs(tmp_path)
    (tmp_path / PILL_FILE).write_text('{"format": "circuitml-pill", "version": 99}')
    with pytest.raises(DatasetError, match="version"):
        load_pill_designs(tmp_path)


# ------------------------------------------------------------------------------------------ the tasks
def test_negatives_and_distractors_are_same_family_with_other_attributes(tiny_data) -> None:
    _, designs = tiny_data
    test = [d for d in designs if d.split == "test_width"]
    by_text = {t: d.attr_key for d in designs for t in d.descriptions}
    pairs = matching_pairs(test, random.Random(0), fallback=designs)
    assert sum(y for *_, y in pairs) == len(test) and len(pairs) == 2 * len(test)
    for text, d, y in pairs:
        assert (by_text[text] == d.attr_key) == bool(y)
        assert text.split()[0] and any(text in o.descriptions for o in designs if o.family == d.family)
    items = choice_items(designs, 3, random.Random(0), fallback=designs)
    assert items and any(len(t) == 1 for t, _ in items) and any(len(c) == 1 for _, c in items)
    for texts, circuits in items:
        if len(texts) == 1:
            keys = [c.attr_key for c in circuits]
            assert len(circuits) == 3 and by_text[texts[0]] == keys[0]
        else:
            keys = [by_text[t] for t in texts]
            assert len(texts) == 3 and keys[0] == circuits[0].attr_key
        assert len(set(keys)) == 3 and len({c.family for c in circuits}) == 1


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny_resources(tiny_data, tmp_path_factory):
    from circuitml.tasks.pill.train import PillResources

    from circuitml.encoders import EncoderConfig, build_encoder
    from tests.test_qa import tiny_bert_config

    root, designs = tiny_data
    words = sorted(
        {w for d in designs for t in d.descriptions for w in re.findall(r"\w+|[^\w\s]", t.lower())}
    )
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizer(str(vocab))
    torch.manual_seed(0)
    bert = transformers.BertModel(tiny_bert_config(vocab_size=len(tokenizer), num_hidden_layers=2)).eval()
    encoder = build_encoder(EncoderConfig(kind="gcn", hidden=16, num_layers=2))
    return PillResources(root, bert, tokenizer, encoder, encoder_name="tiny-gcn")


@pytest.mark.parametrize("fusion", ["pill", "concat", "text", "circuit"])
def test_each_fusion_trains_end_to_end_and_reports_held_out_scores(tiny_resources, fusion) -> None:
    from circuitml.tasks.pill.train import PillTrainConfig, build_model, train_pill

    cfg = PillTrainConfig(fusion=fusion, steps=3, batch=4, bottleneck=4, num_tokens=3, fuse_from=1, choices=3)
    torch.manual_seed(cfg.seed)
    before = {k: v.clone() for k, v in build_model(tiny_resources, cfg).state_dict().items()}
    result = train_pill(tiny_resources, cfg)
    assert math.isfinite(result["final_loss"]) and result["trainable_parameters"] > 0
    for split in ("test_seed", "test_width"):
        s = result["scores"][split]
        assert 0 <= s["match"] <= 1 and s["pairs"] > 0
    assert (result["mean_abs_gate"] is not None) == (fusion == "pill")
    # the same seed gives the same run
    again = train_pill(tiny_resources, cfg)
    assert again["scores"] == result["scores"] and again["final_loss"] == result["final_loss"]
    # the frozen LM and encoder were not touched
    after = build_model(tiny_resources, cfg).state_dict()
    frozen = [k for k in before if k.startswith(("lm.bert.", "circuit.encoder."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)


def test_a_fusion_blind_to_the_circuit_scores_chance_at_choosing_it(tiny_resources) -> None:
    from circuitml.tasks.pill.train import PillTrainConfig, choice_hit, train_pill

    assert choice_hit(torch.tensor([2.0, 1.0, 0.0])) == 1.0 and choice_hit(torch.tensor([0.0, 1.0])) == 0.0
    assert choice_hit(torch.tensor([1.0, 1.0, 0.0, 1.0])) == pytest.approx(1 / 3)
    cfg = PillTrainConfig(fusion="text", steps=1, batch=4, bottleneck=4, fuse_from=1, choices=3)
    scores = train_pill(tiny_resources, cfg)["scores"]
    assert all(s["choose_circuit"] == pytest.approx(1 / 3) for s in scores.values())


def test_pill_and_concat_have_matched_trainable_parameters(tiny_resources) -> None:
    from circuitml.tasks.pill.model import trainable_parameters
    from circuitml.tasks.pill.train import PillTrainConfig, build_model

    counts = {
        f: trainable_parameters(
            build_model(tiny_resources, PillTrainConfig(fusion=f, bottleneck=4, fuse_from=0))
        )
        for f in ("pill", "concat", "text")
    }
    assert abs(counts["pill"] - counts["concat"]) / counts["pill"] < 0.05
    assert counts["text"] < counts["concat"]  # text has no circuit projection


def test_cached_text_states_give_the_scores_of_the_full_forward(tiny_resources) -> None:
    from circuitml.tasks.pill.train import PillTrainConfig, _score, build_model

    cfg = PillTrainConfig(fusion="pill", bottleneck=4, num_tokens=3, fuse_from=1)
    model = build_model(tiny_resources, cfg).eval()
    with torch.no_grad():
        for g in model.lm.gates:
            g.alpha.fill_(0.7)
        for a in model.lm.adapters:
            a.experts.up.normal_()
    d = tiny_resources.designs[:3]
    pairs = [(x.descriptions[0], x) for x in d]
    enc = tiny_resources.tokenizer([t for t, _ in pairs], padding=True, return_tensors="pt")
    feats = torch.stack([tiny_resources.circuit_features(3)[x.id] for x in d])
    with torch.no_grad():
        want = model(enc["input_ids"], enc["attention_mask"], feats)
        got = _score(model, tiny_resources, cfg, pairs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_compare_resumes_and_prints_a_mean_std_table(tiny_resources, tmp_path, monkeypatch) -> None:
    from circuitml.tasks.pill import train as pill_train
    from circuitml.tasks.pill.train import PillTrainConfig, compare_fusions, results_table

    base = PillTrainConfig(steps=2, batch=4, bottleneck=4, num_tokens=3, fuse_from=1, choices=3)
    results = compare_fusions(tiny_resources, tmp_path, base, ("pill", "circuit"), (0, 1))
    assert sorted(results["runs"]) == ["circuit/0", "circuit/1", "pill/0", "pill/1"]
    rows = results_table(results)
    assert [r[0] for r in rows[1:]] == ["pill", "circuit"] and all("±" in c for c in rows[1][4:])
    monkeypatch.setattr(pill_train, "train_pill", lambda *a, **k: pytest.fail("finished runs are not rerun"))
    again = compare_fusions(tiny_resources, tmp_path, base, ("pill", "circuit"), (0, 1))
    assert again == json.loads((tmp_path / "results.json").read_text())


def test_pill_command_errors_are_one_line(tmp_path, capfd) -> None:
    from circuitml import cli

    for argv in (
        ["pill", "train", str(tmp_path)],
        ["pill", "train", str(tmp_path), "--fusion", "late"],
        ["pill", "table", str(tmp_path / "nope.json")],
        ["pill", "data", str(tmp_path / "d"), "--variants", "1"],
        ["pill", "train", str(tmp_path), "--device", "tpu"],
        ["pill", "compare", str(tmp_path), "--out", str(tmp_path / "o"), "--threads", "0"],
        ["pill", "train", str(tmp_path), "--adapter", "lora"],
    ):
        code = cli.main(argv)
        err = capfd.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
