"""IMG-26: a browser upload of too many files is refused with a message that says what to do instead."""

from __future__ import annotations

import pytest

from ila_core.ui.classify import MAX_UPLOAD_FILES, check_upload_count
from ila_core.ui.errors import UserFacing


def test_upload_at_the_cap_is_accepted():
    """Exactly MAX_UPLOAD_FILES files pass the check."""
    check_upload_count([f"/tmp/{i}.png" for i in range(MAX_UPLOAD_FILES)])


def test_500_files_are_refused_with_a_clear_message():
    """500 files are refused before anything is imported; the message names the count and the way out."""
    with pytest.raises(UserFacing, match=r"Too many files in one upload: 500 > 200.*\.zip.*Nothing was stored"):
        check_upload_count([f"/tmp/{i}.png" for i in range(500)])
