"""The build backend of rcluster-core: maturin's, with one check first.

Building from source needs cargo. Without it, maturin's backend would
download a Rust toolchain (about 700 MB, through puccinialin) into a cache
and build with that, silently; here a build without cargo on PATH stops at
once with one sentence saying what to do. MATURIN_NO_INSTALL_RUST keeps
maturin from fetching a toolchain in any hook this module does not wrap.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

os.environ["MATURIN_NO_INSTALL_RUST"] = "1"

import maturin  # noqa: E402
from maturin import *  # noqa: E402,F401,F403

NO_CARGO = (
    "rcluster-core: building from source needs Rust's cargo on PATH (install Rust from "
    "https://rustup.rs, or install a prebuilt wheel: `make wheel` in the repository)"
)


def _require_cargo() -> None:
    if shutil.which("cargo") is None:
        raise SystemExit(NO_CARGO)


def get_requires_for_build_wheel(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    _require_cargo()
    return maturin.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    _require_cargo()
    return maturin.get_requires_for_build_sdist(config_settings)


def get_requires_for_build_editable(config_settings: Mapping[str, Any] | None = None) -> list[str]:
    _require_cargo()
    return maturin.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Mapping[str, Any] | None = None) -> str:
    _require_cargo()
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _require_cargo()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _require_cargo()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)
