"""A trusted-roots directory holding a file that is no certificate: the refusal names that file (the reload warning
and ``config check`` quote it), as docs/troubleshooting.md says."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfa_omf.errors import GeniError
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.trust.roots import load_trusted_roots


def test_a_file_that_is_no_certificate_is_named_in_the_refusal(tmp_path: Path) -> None:
    init_directory(str(tmp_path / "lab"), "lab", ())
    directory = tmp_path / "lab" / "trusted_roots"
    assert load_trusted_roots(str(directory)).anchors  # the lab's own root, readable
    junk = directory / "junk.pem"
    junk.write_text("not a certificate, notes someone kept here\n")
    with pytest.raises(GeniError) as refused:
        load_trusted_roots(str(directory))
    assert refused.value.message.startswith(f"trusted root file {junk}: cannot read a PEM certificate chain: "), (
        refused.value.message
    )
