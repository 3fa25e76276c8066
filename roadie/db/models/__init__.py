"""The schema roadie shares with the platform's API, one module per area; every table is importable from here."""

from roadie.db.models.analytics import AnalyticsDaily, AnalyticsPlay, Download, Like, Repost
from roadie.db.models.base import Base, new_id, utcnow
from roadie.db.models.catalog import (
    TRANSCODE_STATUSES,
    VERSION_STATUSES,
    Asset,
    AudioFingerprint,
    FingerprintIndex,
    Report,
    Track,
    TrackVersion,
    Transcode,
    User,
    Waveform,
)
from roadie.db.models.ops import FailedJob
from roadie.db.models.payouts import (
    PAYOUT_RUN_STATUSES,
    ArtistPayout,
    Charity,
    Contribution,
    PayoutAllocationLine,
    PayoutCharityTotal,
    PayoutRun,
    PayoutUnallocatedLine,
)

__all__ = [
    "PAYOUT_RUN_STATUSES",
    "TRANSCODE_STATUSES",
    "VERSION_STATUSES",
    "AnalyticsDaily",
    "AnalyticsPlay",
    "ArtistPayout",
    "Asset",
    "AudioFingerprint",
    "Base",
    "Charity",
    "Contribution",
    "Download",
    "FailedJob",
    "FingerprintIndex",
    "Like",
    "PayoutAllocationLine",
    "PayoutCharityTotal",
    "PayoutRun",
    "PayoutUnallocatedLine",
    "Report",
    "Repost",
    "Track",
    "TrackVersion",
    "Transcode",
    "User",
    "Waveform",
    "new_id",
    "utcnow",
]
