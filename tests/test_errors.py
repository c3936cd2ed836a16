"""A user's error reads in a few lines: the value, what is accepted, the nearest valid name; exit non-zero.

Each bad input runs the real ``hardcl`` command (``python -m hardcl_lightning``) in a subprocess and
the lines it prints are counted (before: 30-104 line tracebacks, 45-line usage blocks).
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hardcl_lightning.errors import condense, user_error_line

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "simclr.yaml")
SMALL = ["--data.init_args.num_train=32", "--data.init_args.num_val=16", "--data.init_args.batch_size=16",
         "--data.init_args.num_workers=0", "--trainer.max_epochs=1", "--trainer.logger=false"]


def hardcl(tmp_path, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "HARDCL_DEBUG"}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    done = subprocess.run([sys.executable, "-m", "hardcl_lightning", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and not line.startswith("Seed set")]
    return done.returncode, lines


CASES = [
    (["--model.init_args.optimizer=adam"], 1, [r"unknown optimizer 'adam'; choose one of \['sgd', 'lars', 'adamw'\]"]),
    (["--model=SimCLRR"], 2, [r"unknown class 'SimCLRR'; did you mean 'SimCLR'", r"Accepted: .*MoCoV2"]),
    (["--trainer.max_epoch=1"], 2, [r"--trainer.max_epoch \(did you mean --trainer.max_epochs\?\)"]),
    (["--data.init_args.batch_size=abc"], 2, [r"data.batch_size: Expected a <class 'int'>. Got value: abc"]),
    (["--model.init_args.backbone=resnet_tine"], 1, [r"unknown backbone 'resnet_tine'; did you mean 'resnet_tiny'"]),
    (["--data=hardcl_lightning.data.ImageFolderDataModule", "--data.init_args.train_dir=/no/such/dir"], 1,
     [r"train_dir='/no/such/dir' is not a directory"]),
    (["--config", "{file}typo.yaml"], 2, [r"Option 'optimzer' is not accepted \(did you mean optimizer\?\); it is set in .*typo.yaml"]),
    (["--config", "{file}broken.yaml"], 1, [r"broken.yaml, line 4, column 1: not valid YAML"]),
]


@pytest.mark.parametrize(("args", "status", "patterns"), CASES, ids=[" ".join(a) for a, _, _ in CASES])
def test_a_bad_input_gets_a_few_lines_naming_it_and_a_non_zero_exit(tmp_path, args, status, patterns):
    import re

    (tmp_path / "typo.yaml").write_text("model:\n  init_args:\n    optimzer: sgd\n")
    (tmp_path / "broken.yaml").write_text("model:\n  init_args:\n    lr: [1, 2\n")
    args = [a.replace("{file}", f"{tmp_path}/") for a in args]
    code, lines = hardcl(tmp_path, "fit", "--config", TINY, *SMALL, *args)
    text = "\n".join(lines)
    assert code == status and len(lines) <= 4, text  # Lightning's "GPU/TPU available" lines may come first
    assert sum(line.startswith("hardcl fit: error: ") for line in lines) == 1, text
    for pattern in patterns:
        assert re.search(pattern, text), (pattern, text)
    assert "Traceback" not in text and "Namespace(" not in text and "usage:" not in text


def test_the_debug_switch_shows_the_traceback(tmp_path):
    code, lines = hardcl(tmp_path, "fit", "--config", TINY, *SMALL, "--model.init_args.optimizer=adam",
                         env_extra={"HARDCL_DEBUG": "1"})
    assert code != 0 and any("Traceback" in line for line in lines) and len(lines) > 10


def test_hardcl_eval_names_a_missing_checkpoint_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from hardcl_lightning.cli import eval_console_main; eval_console_main()",
                           "export", "--pretrained=/no/such.ckpt", "--output=x.pth"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) <= 2, lines
    assert lines[0].startswith("hardcl-eval export: error: pre-trained checkpoint '/no/such.ckpt' does not exist")


def test_condense_keeps_the_key_and_the_specific_complaint():
    nested = '''Parser key "data":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'SSLDataModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'hardcl_lightning.data.ShapesDataModule':
        Parser key "batch_size":
          Expected a <class 'int'>. Got value: abc
    - Expected a <class 'NoneType'>
  Given value type: <class 'NestedArg'>
  Given value: NestedArg(key='batch_size', val='abc')'''
    assert condense(nested) == "data.batch_size: Expected a <class 'int'>. Got value: abc"


def test_a_full_disk_says_disk_full_and_a_bug_keeps_its_traceback():
    full = OSError(errno.ENOSPC, "No space left on device", "runs/x/last.ckpt")
    assert user_error_line(full).startswith("disk full while writing runs/x/last.ckpt")
    assert user_error_line(ValueError("lr must be > 0, got -1")) == "lr must be > 0, got -1"
    assert user_error_line(AttributeError("'NoneType' object has no attribute 'x'")) is None  # a bug
    assert user_error_line(KeyError("x")) is None
