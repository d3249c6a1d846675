"""The example accelerate configs load with accelerate's own parser and launch `distill train`
the way their comments say."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[3] / "data" / "accelerate"


@pytest.mark.parametrize("name,kind", [("ddp", DistributedType.MULTI_GPU), ("fsdp", DistributedType.FSDP),
                                       ("deepspeed-zero3", DistributedType.DEEPSPEED)])
def test_example_accelerate_configs_parse(name, kind):
    path = CONFIGS / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == kind and config.mixed_precision == "bf16"
    assert f"accelerate launch --config_file data/accelerate/{name}.yaml" in path.read_text()
    assert "-m distill train --student" in path.read_text()
    if kind == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
