"""Export: a checkpoint becomes a Hugging Face folder that AutoModel/AutoTokenizer load."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from plmkit.export import objective_from_checkpoint


def test_bert_export_matches_checkpoint(tiny_fit, run_plmkit, tmp_path: Path):
    run = tiny_fit("bert_tiny", steps=5)
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "hf"
    code, out_text, err = run_plmkit("export", ckpt, out)
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()

    model = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a small dog barks at the cat", "the river flows"], padding=True,
                      return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.cls_token_id
    objective = objective_from_checkpoint(ckpt)
    with torch.no_grad():
        exported = model(**batch).last_hidden_state
        original = objective.model.bert(**batch).last_hidden_state
    assert torch.allclose(exported, original, atol=1e-5)
    # the run's tokenizer was saved with the run and is the exported one
    saved = (run / "tokenizer" / "tokenizer.json").read_text()
    assert saved == (out / "tokenizer.json").read_text()
    # a plugin's export option is refused for the checkpoints of other objectives
    code, _, err = run_plmkit("export", ckpt, tmp_path / "gen", "--generator")
    assert code == 2 and "--generator applies to electra checkpoints only" in err, err


def test_export_options_come_from_plugins():
    from plmkit.export import export_options
    from plmkit.registry import get_registry

    option = export_options()["generator"]  # declared by the ELECTRA plugin's hook
    objectives = get_registry().objectives
    assert option.flag == "--generator" and option.type is bool
    assert option.applies_to(objectives["electra"].cls)
    assert not option.applies_to(objectives["bert"].cls)
