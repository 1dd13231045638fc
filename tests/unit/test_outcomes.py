from __future__ import annotations

import pytest

from scheduler.outcomes import Outcome, OutcomeClass, classify, from_q850, from_q850_name, from_sip

# providers.md §4, row by row: (cause, FreeSWITCH name or None, outcome when not answered).
Q850_TABLE: list[tuple[int, str | None, Outcome]] = [
    (0, "NONE", Outcome.UNKNOWN),
    (1, "UNALLOCATED_NUMBER", Outcome.INVALID_NUMBER),
    (2, "NO_ROUTE_TRANSIT_NET", Outcome.INVALID_NUMBER),
    (3, "NO_ROUTE_DESTINATION", Outcome.INVALID_NUMBER),
    (4, None, Outcome.INVALID_NUMBER),
    (5, None, Outcome.INVALID_NUMBER),
    (6, "CHANNEL_UNACCEPTABLE", Outcome.CONGESTION),
    (7, "CALL_AWARDED_DELIVERED", Outcome.UNKNOWN),
    (8, None, Outcome.CONGESTION),
    (9, None, Outcome.CONGESTION),
    (14, None, Outcome.INVALID_NUMBER),
    (16, "NORMAL_CLEARING", Outcome.UNKNOWN),
    (17, "USER_BUSY", Outcome.BUSY),
    (18, "NO_USER_RESPONSE", Outcome.NO_ANSWER),
    (19, "NO_ANSWER", Outcome.NO_ANSWER),
    (20, "SUBSCRIBER_ABSENT", Outcome.NO_ANSWER),
    (21, "CALL_REJECTED", Outcome.REJECTED),
    (22, "NUMBER_CHANGED", Outcome.INVALID_NUMBER),
    (23, "REDIRECTION_TO_NEW_DESTINATION", Outcome.INVALID_NUMBER),
    (25, "EXCHANGE_ROUTING_ERROR", Outcome.CONGESTION),
    (26, None, Outcome.UNKNOWN),
    (27, "DESTINATION_OUT_OF_ORDER", Outcome.CONGESTION),
    (28, "INVALID_NUMBER_FORMAT", Outcome.INVALID_NUMBER),
    (29, "FACILITY_REJECTED", Outcome.BLOCKED),
    (30, "RESPONSE_TO_STATUS_ENQUIRY", Outcome.UNKNOWN),
    (31, "NORMAL_UNSPECIFIED", Outcome.NO_ANSWER),
    (34, "NORMAL_CIRCUIT_CONGESTION", Outcome.CONGESTION),
    (38, "NETWORK_OUT_OF_ORDER", Outcome.CONGESTION),
    (41, "NORMAL_TEMPORARY_FAILURE", Outcome.CONGESTION),
    (42, "SWITCH_CONGESTION", Outcome.CONGESTION),
    (43, "ACCESS_INFO_DISCARDED", Outcome.UNKNOWN),
    (44, "REQUESTED_CHAN_UNAVAIL", Outcome.CONGESTION),
    (45, "PRE_EMPTED", Outcome.CONGESTION),
    (47, None, Outcome.CONGESTION),
    (50, "FACILITY_NOT_SUBSCRIBED", Outcome.ACCOUNT_ERROR),
    (52, "OUTGOING_CALL_BARRED", Outcome.BLOCKED),
    (54, "INCOMING_CALL_BARRED", Outcome.BLOCKED),
    (57, "BEARERCAPABILITY_NOTAUTH", Outcome.BLOCKED),
    (58, "BEARERCAPABILITY_NOTAVAIL", Outcome.CONGESTION),
    (63, "SERVICE_UNAVAILABLE", Outcome.CONGESTION),
    (65, "BEARERCAPABILITY_NOTIMPL", Outcome.PROVIDER_ERROR),
    (66, "CHAN_NOT_IMPLEMENTED", Outcome.PROVIDER_ERROR),
    (69, "FACILITY_NOT_IMPLEMENTED", Outcome.PROVIDER_ERROR),
    (79, "SERVICE_NOT_IMPLEMENTED", Outcome.PROVIDER_ERROR),
    (81, "INVALID_CALL_REFERENCE", Outcome.PROVIDER_ERROR),
    (88, "INCOMPATIBLE_DESTINATION", Outcome.INVALID_NUMBER),
    (95, "INVALID_MSG_UNSPECIFIED", Outcome.PROVIDER_ERROR),
    (96, "MANDATORY_IE_MISSING", Outcome.PROVIDER_ERROR),
    (97, "MESSAGE_TYPE_NONEXIST", Outcome.PROVIDER_ERROR),
    (98, "WRONG_MESSAGE", Outcome.PROVIDER_ERROR),
    (99, "IE_NONEXIST", Outcome.PROVIDER_ERROR),
    (100, "INVALID_IE_CONTENTS", Outcome.PROVIDER_ERROR),
    (101, "WRONG_CALL_STATE", Outcome.PROVIDER_ERROR),
    (102, "RECOVERY_ON_TIMER_EXPIRE", Outcome.CONGESTION),
    (103, "MANDATORY_IE_LENGTH_ERROR", Outcome.PROVIDER_ERROR),
    (111, "PROTOCOL_ERROR", Outcome.PROVIDER_ERROR),
    (127, "INTERWORKING", Outcome.UNKNOWN),
    # FreeSWITCH-internal causes.
    (487, "ORIGINATOR_CANCEL", Outcome.CANCELED),
    (500, "CRASH", Outcome.PROVIDER_ERROR),
    (501, "SYSTEM_SHUTDOWN", Outcome.PROVIDER_ERROR),
    (502, "LOSE_RACE", Outcome.CANCELED),
    (503, "MANAGER_REQUEST", Outcome.CANCELED),
    (600, "BLIND_TRANSFER", Outcome.UNKNOWN),
    (601, "ATTENDED_TRANSFER", Outcome.UNKNOWN),
    (602, "ALLOTTED_TIMEOUT", Outcome.NO_ANSWER),
    (603, "USER_CHALLENGE", Outcome.ACCOUNT_ERROR),
    (604, "MEDIA_TIMEOUT", Outcome.PROVIDER_ERROR),
    (605, "PICKED_OFF", Outcome.UNKNOWN),
    (606, "USER_NOT_REGISTERED", Outcome.NO_ANSWER),
    (607, "PROGRESS_TIMEOUT", Outcome.NO_ANSWER),
    (608, "INVALID_GATEWAY", Outcome.PROVIDER_ERROR),
    (609, "GATEWAY_DOWN", Outcome.PROVIDER_ERROR),
    (610, "INVALID_URL", Outcome.PROVIDER_ERROR),
    (611, "INVALID_PROFILE", Outcome.PROVIDER_ERROR),
    (612, "NO_PICKUP", Outcome.NO_ANSWER),
    (613, "SRTP_READ_ERROR", Outcome.PROVIDER_ERROR),
]

# providers.md §4 "SIP final response → outcome", plus the additions documented in outcomes.py.
SIP_TABLE: list[tuple[int, Outcome]] = [
    (404, Outcome.INVALID_NUMBER),
    (410, Outcome.INVALID_NUMBER),
    (484, Outcome.INVALID_NUMBER),
    (485, Outcome.INVALID_NUMBER),
    (604, Outcome.INVALID_NUMBER),
    (486, Outcome.BUSY),
    (600, Outcome.BUSY),
    (408, Outcome.NO_ANSWER),
    (480, Outcome.NO_ANSWER),
    (487, Outcome.CANCELED),
    (603, Outcome.REJECTED),
    (607, Outcome.REJECTED),
    (403, Outcome.BLOCKED),
    (488, Outcome.PROVIDER_ERROR),
    (606, Outcome.PROVIDER_ERROR),
    (415, Outcome.PROVIDER_ERROR),
    (500, Outcome.CONGESTION),
    (502, Outcome.CONGESTION),
    (503, Outcome.CONGESTION),
    (504, Outcome.CONGESTION),
    (401, Outcome.ACCOUNT_ERROR),
    (407, Outcome.ACCOUNT_ERROR),
    (402, Outcome.ACCOUNT_ERROR),
    (483, Outcome.CONGESTION),
    (608, Outcome.BLOCKED),
]

EXPECTED_CLASSES: dict[Outcome, OutcomeClass] = {
    Outcome.ANSWERED_HUMAN: OutcomeClass(final=True, consumes_attempt=True, final_status="completed"),
    Outcome.ANSWERED_MACHINE: OutcomeClass(final=False, consumes_attempt=True, final_status="failed"),
    Outcome.ANSWERED_FAX: OutcomeClass(final=True, consumes_attempt=True, final_status="failed"),
    Outcome.BUSY: OutcomeClass(final=False, consumes_attempt=True, final_status="failed"),
    Outcome.NO_ANSWER: OutcomeClass(final=False, consumes_attempt=True, final_status="failed"),
    Outcome.REJECTED: OutcomeClass(final=True, consumes_attempt=True, final_status="failed"),
    Outcome.CANCELED: OutcomeClass(final=False, consumes_attempt=True, final_status="failed"),
    Outcome.CONGESTION: OutcomeClass(final=False, consumes_attempt=True, final_status="failed"),
    Outcome.INVALID_NUMBER: OutcomeClass(final=True, consumes_attempt=True, final_status="failed"),
    Outcome.BLOCKED: OutcomeClass(final=True, consumes_attempt=True, final_status="dnc"),
    Outcome.ACCOUNT_ERROR: OutcomeClass(final=False, consumes_attempt=False, final_status="failed"),
    Outcome.PROVIDER_ERROR: OutcomeClass(final=False, consumes_attempt=False, final_status="failed"),
    Outcome.UNKNOWN: OutcomeClass(final=False, consumes_attempt=True, final_status="failed"),
}


@pytest.mark.parametrize(("cause", "name", "expected"), Q850_TABLE)
def test_q850_cause_maps_to_table_outcome(cause: int, name: str | None, expected: Outcome) -> None:
    """Each unanswered Q.850 cause in the research table maps to the table's outcome."""
    assert from_q850(cause, answered=False) is expected


@pytest.mark.parametrize(("cause", "name", "expected"), [row for row in Q850_TABLE if row[1] is not None])
def test_q850_name_maps_like_its_number(cause: int, name: str, expected: Outcome) -> None:
    """A FreeSWITCH cause name maps to the same outcome as its number, in any letter case."""
    assert from_q850_name(name, answered=False) is expected
    assert from_q850_name(f" {name.lower()} ", answered=False) is expected


@pytest.mark.parametrize("cause", [16, 31, 602])
def test_answered_calls_are_answered_human(cause: int) -> None:
    """NORMAL_CLEARING, NORMAL_UNSPECIFIED and ALLOTTED_TIMEOUT after an answer are ANSWERED_HUMAN."""
    assert from_q850(cause, answered=True) is Outcome.ANSWERED_HUMAN


@pytest.mark.parametrize(
    ("cause", "unanswered"), [(16, Outcome.UNKNOWN), (31, Outcome.NO_ANSWER), (602, Outcome.NO_ANSWER)]
)
def test_answer_dependent_causes_without_answer(cause: int, unanswered: Outcome) -> None:
    """Without an answer signal, causes 16/31/602 never claim the call was answered."""
    assert from_q850(cause, answered=False) is unanswered


@pytest.mark.parametrize("cause", [17, 38, 41, 487])
def test_answer_signal_wins_over_failure_cause(cause: int) -> None:
    """A call that was answered is ANSWERED_HUMAN even if the hangup cause reads like a failure."""
    assert from_q850(cause, answered=True) is Outcome.ANSWERED_HUMAN


@pytest.mark.parametrize(
    ("cause", "expected"),
    [(35, Outcome.CONGESTION), (46, Outcome.CONGESTION), (24, Outcome.UNKNOWN), (999, Outcome.UNKNOWN)],
)
def test_unlisted_q850_cause_is_retryable(cause: int, expected: Outcome) -> None:
    """Unlisted causes are CONGESTION in Q.850's resource-unavailable class, else UNKNOWN."""
    outcome = from_q850(cause, answered=False)
    assert outcome is expected
    assert classify(outcome).consumes_attempt


def test_unknown_q850_name() -> None:
    """An unknown cause name is UNKNOWN, or ANSWERED_HUMAN if the call was answered."""
    assert from_q850_name("SOMETHING_NEW", answered=False) is Outcome.UNKNOWN
    assert from_q850_name("SOMETHING_NEW", answered=True) is Outcome.ANSWERED_HUMAN


@pytest.mark.parametrize(("code", "expected"), SIP_TABLE)
def test_sip_code_maps_to_outcome(code: int, expected: Outcome) -> None:
    """Each SIP final response in the research mapping gives its outcome."""
    assert from_sip(code) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (200, Outcome.ANSWERED_HUMAN),
        (202, Outcome.ANSWERED_HUMAN),
        (501, Outcome.CONGESTION),
        (599, Outcome.CONGESTION),
        (400, Outcome.UNKNOWN),
        (699, Outcome.UNKNOWN),
        (0, Outcome.UNKNOWN),
    ],
)
def test_unlisted_sip_code_falls_back_by_class(code: int, expected: Outcome) -> None:
    """Unlisted SIP codes map by class: 2xx answered, 5xx congestion, anything else UNKNOWN."""
    assert from_sip(code) is expected


@pytest.mark.parametrize("outcome", list(Outcome))
def test_classify_every_outcome(outcome: Outcome) -> None:
    """Every outcome has the product's finality, attempt accounting and final status."""
    assert classify(outcome) == EXPECTED_CLASSES[outcome]


def test_expected_classes_cover_the_enum() -> None:
    """The classification expectations name every Outcome member, so a new member needs a rule."""
    assert set(EXPECTED_CLASSES) == set(Outcome)


def test_outcome_values_are_stable_strings() -> None:
    """Outcome values are the lower-case names stored in the database."""
    assert {o.value for o in Outcome} == {o.name.lower() for o in Outcome}
    assert Outcome("busy") is Outcome.BUSY
    assert str(Outcome.BUSY) == "busy"
