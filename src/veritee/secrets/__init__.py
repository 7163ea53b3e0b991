"""Secret release (relying party): named secrets, each released only to modules whose evidence
satisfies its Rego policy, HPKE-encrypted to the module's own key and signed by the service.

Public surface: the I/O-free decision (:func:`decide`, :class:`Trust`, :class:`Recipient`),
policies (:class:`ReleasePolicy`) and the configuration (:func:`load_config`). The HTTP
service is :mod:`veritee.secrets.service` (kept out of this import: it pulls in FastAPI).
See docs/secrets.md.
"""

from __future__ import annotations

from veritee.secrets.config import Config, Secret
from veritee.secrets.config import load as load_config
from veritee.secrets.policy import Decision, ReleasePolicy, default_policy
from veritee.secrets.release import Recipient, Trust, appraise, decide, judge, policy_input

__all__ = [
    "Config",
    "Decision",
    "Recipient",
    "ReleasePolicy",
    "Secret",
    "Trust",
    "appraise",
    "decide",
    "default_policy",
    "judge",
    "load_config",
    "policy_input",
]
