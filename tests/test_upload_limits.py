"""IMG-26: a browser upload of too many files is refused with a message that says what to do instead."""

from __future__ import annotations

import pytest

from ila_core.data.uploads import UploadPolicy, UploadRefused, check_uploads
from ila_core.ui.uploads import MAX_UPLOAD_FILES


def test_upload_at_the_cap_passes_the_count_check(tmp_path):
    """Exactly MAX_UPLOAD_FILES files pass the count check (the first then fails as a missing file)."""
    with pytest.raises(UploadRefused, match="0.png: refused"):
        check_uploads([tmp_path / f"{i}.png" for i in range(MAX_UPLOAD_FILES)], upload_root=tmp_path,
                      policy=UploadPolicy(max_files=MAX_UPLOAD_FILES))  # fmt: skip


def test_500_files_are_refused_with_a_clear_message(tmp_path):
    """500 files are refused before anything is read; the message names the count and the way out."""
    with pytest.raises(UploadRefused, match=r"Too many files in one upload: 500 > 200.*\.zip.*Nothing was stored"):
        check_uploads([tmp_path / f"{i}.png" for i in range(500)], upload_root=tmp_path,
                      policy=UploadPolicy(max_files=MAX_UPLOAD_FILES))  # fmt: skip
