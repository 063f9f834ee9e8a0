"""The admin form's defaults follow the base checkpoint: L_min and L_max are the base's own (config.json's
training `min_loops`, its model's `max_loops`), at first and whenever the base selection changes."""

from __future__ import annotations

import json

from app.admin import Gate, base_defaults, build_admin
from app.jobs import JobManager
from app.service import Studio
from conftest import copy_tiny


def test_l_min_defaults_to_the_base_checkpoints_training_min_loops(tiny_checkpoints, tmp_path):
    root = copy_tiny(tiny_checkpoints, tmp_path / "checkpoints")
    (root / "tiny-elt").rename(root / "tiny-elt-lmin2")  # the default base: first generator in name order
    config = root / "tiny-elt-lmin2" / "config.json"
    meta = json.loads(config.read_text())
    meta["experiment"]["name"] = "tiny-elt-lmin2"
    meta["experiment"]["train"]["min_loops"] = 2  # trained as the shipped *-elt checkpoints are: L_min = 2
    config.write_text(json.dumps(meta))
    copy_tiny(tiny_checkpoints, root, names=("tiny-vanilla",))  # trained with the default L_min = 1

    studio = Studio([root])
    found = studio.checkpoints  # the admin manages checkpoint folders, not generations
    jobs = JobManager(found, tmp_path / "runs")
    try:
        assert base_defaults(found, "tiny-elt-lmin2") == {"min_loops": 2, "max_loops": 3}
        assert base_defaults(found, "tiny-vanilla") == {"min_loops": 1, "max_loops": 3}
        assert base_defaults(found, "tiny-tokenizer") is None and base_defaults(found, None) is None

        assert found.default_generator == "tiny-elt-lmin2"
        blocks = build_admin(found, jobs, Gate("secret"))
        by_id = {getattr(c, "elem_id", None): c for c in blocks.blocks.values()}
        assert by_id["admin-lmin"].value == 2  # the form opens with the base's L_min, not 1
        assert by_id["admin-lmax"].value == 3
        # choosing another base updates both fields
        changes = [fn for fn in blocks.fns.values() if (by_id["admin-base"]._id, "change") in fn.targets]
        assert len(changes) == 1
        outputs = [getattr(block, "elem_id", None) for block in changes[0].outputs]
        assert outputs == ["admin-lmin", "admin-lmax"]
    finally:
        jobs.close()
        studio.close()
