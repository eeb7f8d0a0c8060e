"""What ``plmkit fit`` prints: the README's main job, in small, shows nothing a user cannot act
on (Lightning's product tips, deprecation warnings from Lightning's internals, a warning about a
log folder plmkit itself filled, an epoch total of -2, a FLOPs total of 0)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: what each piece of noise looks like -> what it was
NOISE = {
    "💡": "a Lightning product tip",
    "Tip:": "a Lightning product tip",
    "is deprecated": "a deprecation warning from a library's internals",
    "exists and is not empty": "CSVLogger finding TensorBoard's events in a fresh log folder",
    "Epoch 0/-": "the epoch total of a run bounded by steps (max_epochs -1)",
    "Total FLOPs": "Lightning's FLOPs total, 0 without an example_input_array",
    "Total Flops": "Lightning's FLOPs total, 0 without an example_input_array",
    "v_num: on_": "the last 4 characters of the version folder's name",
    "Trainer already configured": "Lightning noting that plmkit brought its own callback",
}


def test_main_job_prints_no_noise(tmp_path: Path):
    """``plmkit fit --recipe electra_small ... --overwrite true`` (the README's main job) on a
    tiny model and corpus, in a fresh process as a user runs it: stdout and stderr as printed."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "NO_COLOR")}
    env["COLUMNS"] = "120"
    result = subprocess.run(
        [sys.executable, "-m", "plmkit", "fit", "--recipe", "electra_small",
         "--model.encoder.size", "tiny", "--model.encoder.embedding_size", "32",
         "--data.max_documents", "300", "--data.vocab_size", "600", "--data.max_length", "32",
         "--data.batch_size", "4", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
         "--trainer.log_every_n_steps", "1", "--model.optim.warmup_steps", "1",
         "--trainer.default_root_dir", str(run_dir), "--overwrite", "true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # the progress bar and the model summary were shown, and so could have been noisy
    assert "Epoch 0" in output and "Params" in output, output[-3000:]
    found = {text: what for text, what in NOISE.items() if text in output}
    assert not found, f"{found}\n{output[-4000:]}"
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
