"""What the operator commands share: finding the configuration file."""

from __future__ import annotations

import argparse
import os

from sfa_omf.config import CONFIG_FILE_NAME, Settings, read_config
from sfa_omf.errors import BadArgs


def command_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``--config FILE``, else $SFA_OMF_CONFIG, else ./sfa-omf.conf."""
    path = args.config or os.environ.get("SFA_OMF_CONFIG") or CONFIG_FILE_NAME
    if not os.path.exists(path):
        raise BadArgs(
            f"no configuration file {path}: give --config FILE (sfa-omf init DIR writes DIR/{CONFIG_FILE_NAME})"
        )
    return read_config(path)
