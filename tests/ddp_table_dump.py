"""Test helper: a Lightning callback that saves each rank's sigma table at the end of training, so a test
can check that DDP ranks hold identical tables. Used by tests/test_insta_train.py through
``+callbacks.dump._target_=ddp_table_dump.DumpSigmaTable`` with tests/ on PYTHONPATH."""

import os
from pathlib import Path

import pytorch_lightning as pl
import torch


class DumpSigmaTable(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        run_dir = Path(os.environ.get("INSTA_RS_RUN_DIR", "."))
        torch.save({"sigma": pl_module.sigma_table.cpu(), "label": pl_module.label_table.cpu()},
                   run_dir / f"table_rank{trainer.global_rank}.pt")
