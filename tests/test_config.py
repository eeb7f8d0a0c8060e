"""Typed configs: named sizes, dict round trips, --help text, saved hyperparameters, old
checkpoints."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from plmkit.config import SIZES, EncoderConfig, MaskingConfig, SpecialTokens, as_config
from plmkit.errors import PlmkitError
from plmkit.plugins.bert.model import BertObjective


def test_named_size_fills_only_unset_fields():
    tiny = EncoderConfig(size="tiny").resolved()
    assert (tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.intermediate_size) == (
        128, 2, 2, 512)
    assert tiny.embedding_size == 128 and tiny.attention_dropout == tiny.dropout == 0.1
    custom = EncoderConfig(size="tiny", hidden_size=64, dropout=0.0).resolved()
    assert (custom.hidden_size, custom.num_layers, custom.intermediate_size) == (64, 2, 512)
    assert custom.attention_dropout == 0.0 and custom.embedding_size == 64
    assert EncoderConfig().resolved().hidden_size == SIZES["base"]["hidden_size"] == 768
    with pytest.raises(PlmkitError, match="not a multiple"):
        EncoderConfig(size="tiny", num_heads=3).resolved()
    with pytest.raises(PlmkitError, match="encoder.size"):
        EncoderConfig(size="huge")  # type: ignore[arg-type]


def test_as_config_accepts_dicts_and_names_unknown_fields():
    assert as_config(MaskingConfig, {"probability": 0.3}).probability == 0.3
    assert as_config(MaskingConfig, None) == MaskingConfig()
    with pytest.raises(PlmkitError, match="unknown MaskingConfig field.*rate"):
        as_config(MaskingConfig, {"rate": 0.3})
    with pytest.raises(PlmkitError, match="mask_rate"):
        MaskingConfig(mask_rate=0.9, random_rate=0.2)


def test_special_tokens_from_tokenizer(tokenizer):
    tokens = SpecialTokens.from_tokenizer(tokenizer)
    assert tokens.vocab_size == len(tokenizer)
    assert (tokens.cls, tokens.sep, tokens.pad, tokens.mask) == (
        tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
        tokenizer.mask_token_id)
    assert set(tokens.all) == set(tokenizer.all_special_ids)
    assert SpecialTokens.from_tokenizer(tokens) is tokens


def test_fit_help_documents_encoder_and_masking_fields(capsys):
    from plmkit.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "plmkit.plugins.bert.BertObjective"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.encoder.size" in out and "--model.masking.whole_word" in out
    assert "Named size that fills the four sizes below" in out
    assert "Share of the (non-special) tokens to predict" in out


class _FixesNsp(BertObjective):
    """A subclass that fixes one of its parent's arguments."""

    objective_name = "fixes_nsp"

    def __init__(self, masking: MaskingConfig = MaskingConfig(probability=0.2),
                 **kwargs) -> None:
        super().__init__(masking=masking, nsp=False, **kwargs)


def test_saved_hyperparameters_rebuild_the_objective(tmp_path: Path):
    objective = _FixesNsp(encoder=EncoderConfig(size="tiny"))
    hparams = dict(objective.hparams)
    # only the constructed class's own arguments: the parent's fixed nsp does not leak
    assert "nsp" not in hparams
    assert hparams["encoder"] == asdict(EncoderConfig(size="tiny").resolved())
    assert hparams["masking"] == asdict(MaskingConfig(probability=0.2))
    torch.save({"hyper_parameters": hparams}, tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]
    rebuilt = _FixesNsp(**loaded)
    assert rebuilt.encoder == objective.encoder and rebuilt.masking.probability == 0.2
    assert rebuilt.nsp is False
    # a partial dict from Python overrides the method's own defaults, not the dataclass's
    partial = _FixesNsp(encoder={"size": "tiny"}, masking={"whole_word": True})
    assert partial.masking.probability == 0.2 and partial.masking.whole_word


def test_checkpoint_of_an_older_plmkit_is_a_one_line_error(run_plmkit, tmp_path: Path):
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"hidden_size": 128},
                "plmkit": {"objective": "bert", "max_length": 128}}, old)
    code, _, err = run_plmkit("export", old, tmp_path / "out")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("plmkit: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "plmkit 0.1" in lines[0] and "checkpoint format 1" in lines[0]


def test_an_impossible_encoder_is_a_one_line_error(run_plmkit, tmp_path: Path):
    code, _, err = run_plmkit("fit", "--recipe", "bert_tiny", "--model.encoder.num_heads", "3",
                              "--trainer.default_root_dir", tmp_path / "run")
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("plmkit: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "not a multiple of encoder.num_heads 3" in lines[0]


@pytest.mark.parametrize("name", ["bert", "roberta", "albert", "spanbert", "structbert", "ernie",
                                  "electra", "gpt", "t5", "xlnet", "elmo"])
def test_every_objective_rebuilds_from_its_checkpoint_and_exports(name, tokenizer, tmp_path):
    """Built from its tiny recipe, saved, rebuilt from the saved hyperparameters alone
    (``weights_only=True``), same weights, then exported."""
    import copy
    import importlib

    import yaml

    from plmkit.data.tokenizer import add_special_tokens
    from plmkit.registry import get_registry

    recipe = yaml.safe_load(get_registry().recipe(f"{name}_tiny").path.read_text())
    module, cls_name = recipe["model"]["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), cls_name)
    objective = cls(**recipe["model"].get("init_args", {}))
    tok = copy.deepcopy(tokenizer)
    add_special_tokens(tok, objective.special_tokens())
    objective.attach_tokenizer(tok, 64)
    objective.configure_model()
    torch.save({"hyper_parameters": dict(objective.hparams),
                "state_dict": objective.state_dict()}, tmp_path / "saved.ckpt")
    saved = torch.load(tmp_path / "saved.ckpt", weights_only=True)
    rebuilt = cls(**saved["hyper_parameters"])
    rebuilt.attach_tokenizer(tok, 64)
    rebuilt.configure_model()
    rebuilt.load_state_dict(saved["state_dict"])  # strict: the same architecture
    assert dict(rebuilt.hparams) == saved["hyper_parameters"]
    rebuilt.export(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file()
