"""The speed benchmark's Inductor settings."""

from __future__ import annotations

import pytest
from torch._inductor import config
from trainer_speed import set_inductor_config


def test_inductor_settings_are_set_and_an_unknown_name_is_refused() -> None:
    with config.patch({}):  # restores what the test sets
        set_inductor_config(["triton.enable_pdl=True", "combo_kernels=True"])
        assert config.triton.enable_pdl is True and config.combo_kernels is True
    with pytest.raises(SystemExit, match=r"has no 'triton\.no_such_setting'"):
        set_inductor_config(["triton.no_such_setting=1"])
