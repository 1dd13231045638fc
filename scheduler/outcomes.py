"""One outcome vocabulary for every provider, and what each outcome does to a number.

Mappings follow the provider research notes (providers.md §4: Q.850 causes with FreeSWITCH names
and SIP final responses; §6: the vocabulary). Every mapping is total: providers send codes nobody listed,
and a parser that raises on them would strand the attempt instead of retrying it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    ANSWERED_HUMAN = "answered_human"
    ANSWERED_MACHINE = "answered_machine"
    ANSWERED_FAX = "answered_fax"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    CANCELED = "canceled"
    CONGESTION = "congestion"
    INVALID_NUMBER = "invalid_number"
    BLOCKED = "blocked"
    ACCOUNT_ERROR = "account_error"
    PROVIDER_ERROR = "provider_error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OutcomeClass:
    """What an outcome does to the number.

    final_status is the number's status once this outcome ends its attempts: at once when final,
    and when the attempts run out otherwise ("completed", "failed" or "dnc").
    """

    final: bool
    consumes_attempt: bool
    final_status: str


_FINAL_COMPLETED = OutcomeClass(final=True, consumes_attempt=True, final_status="completed")
_FINAL_FAILED = OutcomeClass(final=True, consumes_attempt=True, final_status="failed")
_RETRYABLE = OutcomeClass(final=False, consumes_attempt=True, final_status="failed")
# The number did nothing wrong: spending its attempts on our outage would fail numbers that were
# never actually dialed.
_NOT_THE_NUMBERS_FAULT = OutcomeClass(final=False, consumes_attempt=False, final_status="failed")

_CLASSES: dict[Outcome, OutcomeClass] = {
    Outcome.ANSWERED_HUMAN: _FINAL_COMPLETED,
    # Retryable by default: a machine is not a conversation. A campaign's amd_policy 'final' makes
    # it final and completed (a message was left), in dialer_record_outcomes and scheduler.retry.
    Outcome.ANSWERED_MACHINE: _RETRYABLE,
    Outcome.ANSWERED_FAX: _FINAL_FAILED,
    Outcome.BUSY: _RETRYABLE,
    Outcome.NO_ANSWER: _RETRYABLE,
    Outcome.REJECTED: _FINAL_FAILED,
    Outcome.CANCELED: _RETRYABLE,
    Outcome.CONGESTION: _RETRYABLE,
    Outcome.INVALID_NUMBER: _FINAL_FAILED,
    # Barred or carrier-blocked: dialing again only risks the caller ID's reputation.
    Outcome.BLOCKED: OutcomeClass(final=True, consumes_attempt=True, final_status="dnc"),
    Outcome.ACCOUNT_ERROR: _NOT_THE_NUMBERS_FAULT,
    Outcome.PROVIDER_ERROR: _NOT_THE_NUMBERS_FAULT,
    Outcome.UNKNOWN: _RETRYABLE,
}


def classify(outcome: Outcome) -> OutcomeClass:
    return _CLASSES[outcome]


_Q850: dict[int, Outcome] = {
    0: Outcome.UNKNOWN,
    1: Outcome.INVALID_NUMBER,
    2: Outcome.INVALID_NUMBER,
    3: Outcome.INVALID_NUMBER,
    4: Outcome.INVALID_NUMBER,
    5: Outcome.INVALID_NUMBER,
    6: Outcome.CONGESTION,
    7: Outcome.UNKNOWN,
    8: Outcome.CONGESTION,
    9: Outcome.CONGESTION,
    14: Outcome.INVALID_NUMBER,  # ported: the number must be looked up again before redialing
    16: Outcome.UNKNOWN,  # NORMAL_CLEARING without an answer says nothing about why
    17: Outcome.BUSY,
    18: Outcome.NO_ANSWER,
    19: Outcome.NO_ANSWER,
    20: Outcome.NO_ANSWER,  # mobile switched off or out of coverage: worth trying later
    21: Outcome.REJECTED,
    22: Outcome.INVALID_NUMBER,
    23: Outcome.INVALID_NUMBER,
    25: Outcome.CONGESTION,
    26: Outcome.UNKNOWN,
    27: Outcome.CONGESTION,
    28: Outcome.INVALID_NUMBER,
    29: Outcome.BLOCKED,
    30: Outcome.UNKNOWN,
    31: Outcome.NO_ANSWER,
    34: Outcome.CONGESTION,
    38: Outcome.CONGESTION,
    41: Outcome.CONGESTION,
    42: Outcome.CONGESTION,
    43: Outcome.UNKNOWN,
    44: Outcome.CONGESTION,
    45: Outcome.CONGESTION,
    47: Outcome.CONGESTION,
    50: Outcome.ACCOUNT_ERROR,
    52: Outcome.BLOCKED,
    54: Outcome.BLOCKED,
    57: Outcome.BLOCKED,
    58: Outcome.CONGESTION,
    63: Outcome.CONGESTION,
    65: Outcome.PROVIDER_ERROR,
    66: Outcome.PROVIDER_ERROR,
    69: Outcome.PROVIDER_ERROR,
    79: Outcome.PROVIDER_ERROR,
    81: Outcome.PROVIDER_ERROR,
    88: Outcome.INVALID_NUMBER,  # a fax or data line: unusable for voice
    95: Outcome.PROVIDER_ERROR,
    96: Outcome.PROVIDER_ERROR,
    97: Outcome.PROVIDER_ERROR,
    98: Outcome.PROVIDER_ERROR,
    99: Outcome.PROVIDER_ERROR,
    100: Outcome.PROVIDER_ERROR,
    101: Outcome.PROVIDER_ERROR,
    102: Outcome.CONGESTION,
    103: Outcome.PROVIDER_ERROR,
    111: Outcome.PROVIDER_ERROR,
    127: Outcome.UNKNOWN,
    # FreeSWITCH-internal causes, seen from FreeSWITCH-based providers.
    487: Outcome.CANCELED,
    500: Outcome.PROVIDER_ERROR,
    501: Outcome.PROVIDER_ERROR,
    502: Outcome.CANCELED,  # LOSE_RACE: another branch of the originate won
    503: Outcome.CANCELED,
    600: Outcome.UNKNOWN,  # transfers happen after answer; unanswered they explain nothing
    601: Outcome.UNKNOWN,
    602: Outcome.NO_ANSWER,  # ALLOTTED_TIMEOUT before answer: it rang out the time we allowed
    603: Outcome.ACCOUNT_ERROR,  # USER_CHALLENGE: the SIP auth challenge failed, as SIP 401/407 do
    604: Outcome.PROVIDER_ERROR,
    605: Outcome.UNKNOWN,
    606: Outcome.NO_ANSWER,
    607: Outcome.NO_ANSWER,
    608: Outcome.PROVIDER_ERROR,
    609: Outcome.PROVIDER_ERROR,
    610: Outcome.PROVIDER_ERROR,
    611: Outcome.PROVIDER_ERROR,
    612: Outcome.NO_ANSWER,
    613: Outcome.PROVIDER_ERROR,
}

_Q850_NAMES: dict[str, int] = {
    "NONE": 0,
    "UNSPECIFIED": 0,
    "UNALLOCATED_NUMBER": 1,
    "NO_ROUTE_TRANSIT_NET": 2,
    "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6,
    "CALL_AWARDED_DELIVERED": 7,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21,
    "NUMBER_CHANGED": 22,
    "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25,
    "DESTINATION_OUT_OF_ORDER": 27,
    "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29,
    "RESPONSE_TO_STATUS_ENQUIRY": 30,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34,
    "NETWORK_OUT_OF_ORDER": 38,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42,
    "ACCESS_INFO_DISCARDED": 43,
    "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45,
    "FACILITY_NOT_SUBSCRIBED": 50,
    "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54,
    "BEARERCAPABILITY_NOTAUTH": 57,
    "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63,
    "BEARERCAPABILITY_NOTIMPL": 65,
    "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69,
    "SERVICE_NOT_IMPLEMENTED": 79,
    "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88,
    "INVALID_MSG_UNSPECIFIED": 95,
    "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97,
    "WRONG_MESSAGE": 98,
    "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100,
    "WRONG_CALL_STATE": 101,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103,
    "PROTOCOL_ERROR": 111,
    "INTERWORKING": 127,
    "ORIGINATOR_CANCEL": 487,
    "CRASH": 500,
    "SYSTEM_SHUTDOWN": 501,
    "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503,
    "BLIND_TRANSFER": 600,
    "ATTENDED_TRANSFER": 601,
    "ALLOTTED_TIMEOUT": 602,
    "USER_CHALLENGE": 603,
    "MEDIA_TIMEOUT": 604,
    "PICKED_OFF": 605,
    "USER_NOT_REGISTERED": 606,
    "PROGRESS_TIMEOUT": 607,
    "INVALID_GATEWAY": 608,
    "GATEWAY_DOWN": 609,
    "INVALID_URL": 610,
    "INVALID_PROFILE": 611,
    "NO_PICKUP": 612,
    "SRTP_READ_ERROR": 613,
}


def from_q850(cause: int, answered: bool) -> Outcome:
    """Outcome of a hangup cause; `answered` must come from the provider's answer signal.

    An answered call is ANSWERED_HUMAN whatever the cause: the cause then says how a connected
    call ended (a network drop mid-conversation is cause 38), and retrying it would ring a person
    who already picked up. AMD refines HUMAN into MACHINE or FAX in the adapter, which has it.
    """
    if answered:
        return Outcome.ANSWERED_HUMAN
    known = _Q850.get(cause)
    if known is not None:
        return known
    # Unlisted causes: FreeSWITCH sends them on as SIP 480, "temporarily unavailable", i.e. try
    # again later. UNKNOWN is that (retryable, consumes an attempt) without claiming it rang out.
    # Q.850's 32-47 class is "resource unavailable", which is congestion by definition. Never
    # PROVIDER_ERROR: it consumes no attempt, so an unknown persistent cause would loop forever.
    if 32 <= cause <= 47:
        return Outcome.CONGESTION
    return Outcome.UNKNOWN


def from_q850_name(name: str, answered: bool) -> Outcome:
    """Outcome of a FreeSWITCH cause name, case-insensitive (Telnyx sends them lower-case)."""
    cause = _Q850_NAMES.get(name.strip().upper())
    if cause is None:
        return Outcome.ANSWERED_HUMAN if answered else Outcome.UNKNOWN
    return from_q850(cause, answered)


_SIP: dict[int, Outcome] = {
    401: Outcome.ACCOUNT_ERROR,
    402: Outcome.ACCOUNT_ERROR,  # Payment Required: out of funds, as Plivo/Twilio account errors
    403: Outcome.BLOCKED,
    404: Outcome.INVALID_NUMBER,
    407: Outcome.ACCOUNT_ERROR,
    408: Outcome.NO_ANSWER,
    410: Outcome.INVALID_NUMBER,
    415: Outcome.PROVIDER_ERROR,
    480: Outcome.NO_ANSWER,
    483: Outcome.CONGESTION,  # Too Many Hops: FreeSWITCH's SIP for EXCHANGE_ROUTING_ERROR (25)
    484: Outcome.INVALID_NUMBER,
    485: Outcome.INVALID_NUMBER,
    486: Outcome.BUSY,
    487: Outcome.CANCELED,
    488: Outcome.PROVIDER_ERROR,
    500: Outcome.CONGESTION,
    502: Outcome.CONGESTION,
    503: Outcome.CONGESTION,
    504: Outcome.CONGESTION,
    600: Outcome.BUSY,
    603: Outcome.REJECTED,
    604: Outcome.INVALID_NUMBER,
    606: Outcome.PROVIDER_ERROR,
    607: Outcome.REJECTED,
    608: Outcome.BLOCKED,  # RFC 8688 "Rejected": an intermediary's call-blocking analytics refused us
}


def from_sip(code: int) -> Outcome:
    """Outcome of a SIP final response code."""
    known = _SIP.get(code)
    if known is not None:
        return known
    if 200 <= code < 300:
        return Outcome.ANSWERED_HUMAN
    # Other server failures are transient by definition; they consume an attempt because a
    # non-consuming outcome from a persistently failing route would requeue the number forever.
    if 500 <= code < 600:
        return Outcome.CONGESTION
    return Outcome.UNKNOWN
