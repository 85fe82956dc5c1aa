"""Where a multi-process run's settings come from: the config's `distributed` fields, else REC_KD_* variables."""

import pytest

from rec_kd import defaults
from rec_kd.train import distributed

ENV = {"REC_KD_COORDINATOR_ADDRESS": "10.0.0.1:1234", "REC_KD_NUM_PROCESSES": "4", "REC_KD_PROCESS_ID": "0"}


def test_no_settings_means_one_process():
    assert distributed.settings(defaults.get_config("tmall"), environ={}) is None


def test_environment_fills_every_field_and_process_zero_counts():
    assert distributed.settings(defaults.get_config("tmall"), environ=ENV) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 0,
    }


def test_config_wins_over_the_environment():
    config = defaults.get_config("tmall")
    config.distributed.coordinator_address, config.distributed.process_id = "host:99", 3
    assert distributed.settings(config, environ=ENV) == {"coordinator_address": "host:99", "num_processes": 4, "process_id": 3}


def test_auto_lets_jax_detect_the_cluster():
    assert distributed.settings(defaults.get_config("tmall"), environ={"REC_KD_DISTRIBUTED": "auto"}) == {}


def test_an_address_without_count_or_id_is_an_error_naming_both_sources():
    with pytest.raises(
        defaults.ConfigError, match="distributed.num_processes / REC_KD_NUM_PROCESSES, distributed.process_id / REC_KD_PROCESS_ID"
    ):
        distributed.settings(defaults.get_config("tmall"), environ={"REC_KD_COORDINATOR_ADDRESS": "h:1"})
