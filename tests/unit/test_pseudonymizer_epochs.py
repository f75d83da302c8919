"""Pseudonymizer key epochs without Kafka: the registry's transition fields, one batch evaluated under two
keys with a proof each, clients that get the current and previous pseudonym during a transition and only
the current one after, the service destroying a key the registry no longer names, and a sealed-key domain
moving to the pseudonymizer (the HMAC pseudonym as the previous one, then gone everywhere)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from schemas.registry import RegistryDocument
from services import trust
from services.bus.registry_follower import RegistryInForce
from services.kernel import crypto, oprf
from services.kernel.errors import BadSignatureError, MalformedError, UsageError
from services.kernel.pseudonym import EpochPseudonyms, normalize_subject, pseudonym, pseudonym_epochs
from services.kernel.registry import Registry, sign_document
from services.pseudonymizer import core
from services.pseudonymizer.app import Pseudonymizer, PseudonymizerSettings, load_keys
from services.pseudonymizer.client import ClientMetrics, ObliviousPseudonymizer, PseudonymizerUnavailableError
from services.pseudonymizer.metrics import PseudonymizerMetrics
from services.sdk.client import lead_identities
from services.trust import admin
from tests.kit import NOW, DemoDomain, Served

pytestmark = pytest.mark.unit

PHONE = normalize_subject(phone="13800138000")
ID_NUMBER = normalize_subject(id_number="11010519491231002X")
UNTIL = NOW + timedelta(days=373)


# --------------------------------------------------------------------------- domains


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = Path(tmp_path_factory.mktemp("epochs")) / ".lianfang"
    DemoDomain.create(home, pseudonymizer_url="http://127.0.0.1:9")
    return home


@pytest.fixture(scope="module")
def sealed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = Path(tmp_path_factory.mktemp("sealed")) / ".lianfang"
    DemoDomain.create(home)
    return home


def copy_of(template: Path, tmp_path: Path) -> DemoDomain:
    """A domain of its own for a test that changes keys (a copy: creating one costs seconds)."""
    home = tmp_path / template.parent.name / ".lianfang"
    shutil.copytree(template, home)
    domain = trust.open_domain(home)
    return DemoDomain(home=home, trust=domain, registry=domain.registry(NOW))


@pytest.fixture
def oblivious(template: Path, tmp_path: Path) -> DemoDomain:
    return copy_of(template, tmp_path)


@pytest.fixture
def sealed(sealed_template: Path, tmp_path: Path) -> DemoDomain:
    return copy_of(sealed_template, tmp_path)


def signed(domain: DemoDomain, document: RegistryDocument) -> tuple[bytes, Registry]:
    stores = domain.trust.root_keystores()[:2]
    data = sign_document(document, {kid: key for s in stores for kid, key in s.signing.items()})
    return data, Registry.from_bytes(data, trusted_roots=domain.trust.trusted_roots(), now=document.issued)


def rotated(
    domain: DemoDomain, at: timedelta = timedelta(minutes=1)
) -> tuple[bytes, Registry, core.PseudonymizerKey]:
    """The next key in the domain's key folder, and the signed registry of the transition to it."""
    role = domain.registry.pseudonymizer
    assert role is not None
    version = role.version + 1
    key = trust.create_pseudonymizer_key(domain.home, version, name=core.key_file_name(version))
    change = admin.rotate_pseudonymizer(
        domain.registry.document,
        version=version,
        public=crypto.b64e(key.key.public),
        transition_until=UNTIL,
        now=NOW + at,
        lifetime=timedelta(days=90),
    )
    data, registry = signed(domain, change.document)
    return data, registry, key


def ended(domain: DemoDomain, registry: Registry) -> tuple[bytes, Registry]:
    change = admin.end_pseudonymizer_transition(
        registry.document, now=NOW + timedelta(minutes=2), lifetime=timedelta(days=90), force=True
    )
    return signed(domain, change.document)


# --------------------------------------------------------------------------- the registry's fields


def role_doc(domain: DemoDomain, **role: Any) -> dict[str, Any]:
    doc = domain.registry.document.model_dump(mode="json")
    doc["pseudonymizer"].update(role)
    return doc


OTHER_PUBLIC = crypto.b64e(oprf.generate_key_pair().public)
SCHEMA_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "a previous key below the current one, with an end, reads": (
        {
            "version": 2,
            "previous": {"version": 1, "public": OTHER_PUBLIC},
            "transition_until": UNTIL.isoformat(),
        },
        None,
    ),
    "a previous key not below the current one is refused": (
        {
            "version": 2,
            "previous": {"version": 2, "public": OTHER_PUBLIC},
            "transition_until": UNTIL.isoformat(),
        },
        "below the current one",
    ),
    "a previous key that is the current key is refused": (
        {"version": 2, "previous": {"version": 1, "public": None}, "transition_until": UNTIL.isoformat()},
        "is the current one",
    ),
    "a previous key without the end of its transition is refused": (
        {"version": 2, "previous": {"version": 1, "public": OTHER_PUBLIC}},
        "transition_until",
    ),
    "an end of a transition without one is refused": (
        {"transition_until": UNTIL.isoformat()},
        "transition_until",
    ),
    "an unknown field of the role is refused": ({"epoch": 2}, "Extra inputs"),
}


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=list(SCHEMA_CASES))
def test_the_registrys_pseudonymizer_transition_fields(oblivious: DemoDomain, case: str) -> None:
    role, refused = SCHEMA_CASES[case]
    doc = role_doc(oblivious, **role)
    previous = doc["pseudonymizer"].get("previous")
    if previous is not None and previous["public"] is None:
        previous["public"] = doc["pseudonymizer"]["public"]
    if refused is None:
        RegistryDocument.model_validate_json(json.dumps(doc))
    else:
        with pytest.raises(ValidationError, match=refused):
            RegistryDocument.model_validate_json(json.dumps(doc))


def test_a_registry_without_a_transition_is_written_as_before_the_fields_existed(
    oblivious: DemoDomain,
) -> None:
    written = json.loads(oblivious.registry.payload)["pseudonymizer"]
    assert set(written) == {"suite", "mode", "version", "public", "url"}
    _, registry, _ = rotated(oblivious)
    during = json.loads(registry.payload)["pseudonymizer"]
    assert set(during) == {"suite", "mode", "version", "public", "url", "previous", "transition_until"}
    _, after = ended(oblivious, registry)
    assert set(json.loads(after.payload)["pseudonymizer"]) == set(written)


SEALED_CASES: dict[str, tuple[int, bool, bool, str | None]] = {
    # (pseudonymizer version, with an end, with a previous key too, refusal)
    "a sealed key beside a pseudonymizer above it, with an end, reads": (2, True, False, None),
    "a sealed key beside a pseudonymizer of its own version is refused": (1, True, False, "above the sealed"),
    "a sealed key beside a pseudonymizer without an end is refused": (2, False, False, "transition_until"),
    "a sealed key and a previous pseudonymizer key at once are refused": (3, True, True, "one transition"),
}


@pytest.mark.parametrize("case", SEALED_CASES, ids=list(SEALED_CASES))
def test_a_sealed_key_beside_a_pseudonymizer_is_only_a_transition(
    oblivious: DemoDomain, sealed_template: Path, tmp_path: Path, case: str
) -> None:
    version, with_end, with_previous, refused = SEALED_CASES[case]
    sealed = copy_of(sealed_template, tmp_path / "sealed")
    doc = sealed.registry.document.model_dump(mode="json")
    role = oblivious.registry.document.model_dump(mode="json")["pseudonymizer"] | {"version": version}
    if with_end:
        role["transition_until"] = UNTIL.isoformat()
    if with_previous:
        role["previous"] = {"version": 2, "public": OTHER_PUBLIC}
    doc["pseudonymizer"] = role
    if refused is None:
        RegistryDocument.model_validate_json(json.dumps(doc))
    else:
        with pytest.raises(ValidationError, match=refused):
            RegistryDocument.model_validate_json(json.dumps(doc))


REQUEST_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "elements alone read (a client from before key epochs)": ({}, None),
    "a version and a previous one below it read": ({"version": 2, "previous": 1}, None),
    "a previous version without a version is refused": ({"previous": 1}, "goes with"),
    "a previous version not below the version is refused": ({"version": 2, "previous": 2}, "below it"),
    "a version that is not an integer is refused": ({"version": "2"}, "key version"),
    "a version that is a boolean is refused": ({"version": True}, "key version"),
    "a negative version is refused": ({"version": -1}, "key version"),
    "an unknown field is refused": ({"keys": [1]}, "optionally"),
}


@pytest.mark.parametrize("case", REQUEST_CASES, ids=list(REQUEST_CASES))
def test_an_evaluation_request_names_the_versions_it_wants(case: str) -> None:
    fields, refused = REQUEST_CASES[case]
    element = oprf.blind(b"cnid:x", core.MODE).element
    body = json.dumps({"elements": [crypto.b64e(element)], **fields}).encode()
    if refused is None:
        parsed = core.EvaluateRequest.from_bytes(body)
        assert (parsed.version, parsed.previous) == (fields.get("version"), fields.get("previous"))
    else:
        with pytest.raises(MalformedError, match=refused):
            core.EvaluateRequest.from_bytes(body)


# --------------------------------------------------------------------------- two evaluations, two proofs


def two_keys() -> tuple[core.PseudonymizerKey, core.PseudonymizerKey]:
    return (
        core.PseudonymizerKey(version=2, key=oprf.generate_key_pair()),
        core.PseudonymizerKey(version=1, key=oprf.generate_key_pair()),
    )


def test_one_request_is_evaluated_under_both_keys_and_each_proof_verifies_against_its_own_key() -> None:
    current, previous = two_keys()
    inputs = [b"cnid:one", b"phone:two"]
    blinds = [oprf.blind(i, core.MODE) for i in inputs]
    request = core.EvaluateRequest(tuple(b.element for b in blinds), version=2, previous=1)
    body = json.dumps(core.answer(current, request, previous=previous)).encode()
    (v_now, _, now_eval), (v_before, _, before_eval) = core.parse_answers(body, expected=2)
    assert (v_now, v_before) == (2, 1)
    got_now = oprf.finalize(inputs, blinds, now_eval, core.MODE, public=current.key.public)
    got_before = oprf.finalize(inputs, blinds, before_eval, core.MODE, public=previous.key.public)
    assert got_now == [oprf.evaluate(current.key, i, core.MODE) for i in inputs]
    assert got_before == [oprf.evaluate(previous.key, i, core.MODE) for i in inputs]
    assert core.parse_answer(body, expected=2)[0] == 2


@pytest.mark.parametrize("swapped", ["current", "previous"])
def test_an_evaluation_checked_against_the_other_epochs_key_is_refused(swapped: str) -> None:
    current, previous = two_keys()
    inputs = [b"cnid:one"]
    blinds = [oprf.blind(i, core.MODE) for i in inputs]
    request = core.EvaluateRequest(tuple(b.element for b in blinds), version=2, previous=1)
    body = json.dumps(core.answer(current, request, previous=previous)).encode()
    evaluations = core.parse_answers(body, expected=1)
    evaluation, wrong = (
        (evaluations[0][2], previous) if swapped == "current" else (evaluations[1][2], current)
    )
    with pytest.raises(BadSignatureError):
        oprf.finalize(inputs, blinds, evaluation, core.MODE, public=wrong.key.public)


def test_retired_versions_are_those_below_every_named_one_and_a_prepared_key_is_kept(
    oblivious: DemoDomain,
) -> None:
    _, registry, _ = rotated(oblivious)
    role = registry.pseudonymizer
    assert role is not None
    assert core.named_versions(role) == (2, 1)
    assert core.retired_versions([1, 2, 3], role) == []
    _, after = ended(oblivious, registry)
    assert after.pseudonymizer is not None
    assert core.retired_versions([0, 1, 2, 3], after.pseudonymizer) == [0, 1]


# --------------------------------------------------------------------------- service and client


@dataclass
class Running:
    domain: DemoDomain
    in_force: RegistryInForce
    service: Pseudonymizer
    served: Served

    def client(self, registry: Registry | None = None, participant: str = "police") -> ObliviousPseudonymizer:
        return ObliviousPseudonymizer(
            keystore=self.domain.keys(participant),
            registry=(lambda: registry) if registry is not None else (lambda: self.in_force.current),
            url=self.served.url,
            clock=lambda: NOW,
            metrics=ClientMetrics(CollectorRegistry()),
        )


@pytest.fixture
def running(oblivious: DemoDomain) -> Iterator[Running]:
    in_force = RegistryInForce(
        oblivious.registry, trusted_roots=oblivious.registry.document.roots, clock=lambda: NOW
    )
    service = Pseudonymizer(
        PseudonymizerSettings(rate_per_s=100.0, burst=64),
        key=load_keys(oblivious.home, oblivious.registry),
        registry=in_force,
        trail=None,
        clock=lambda: NOW,
        metrics=PseudonymizerMetrics(CollectorRegistry()),
        key_folder=oblivious.home / "pseudonymizer",
    )
    served = Served(service.application())
    yield Running(oblivious, in_force, service, served)
    served.close()


def test_during_a_transition_clients_get_the_new_pseudonym_and_the_one_the_old_key_gave(
    running: Running,
) -> None:
    before = running.client().pseudonyms([PHONE, ID_NUMBER])
    old_key = running.domain.pseudonymizer_key()
    data, _registry, new_key = rotated(running.domain)
    assert running.in_force.offer(data).taken
    epochs = running.client().epochs([PHONE, ID_NUMBER])
    assert [e.previous for e in epochs] == before == old_key.pseudonyms([PHONE, ID_NUMBER])
    assert [e.current for e in epochs] == new_key.pseudonyms([PHONE, ID_NUMBER])
    assert all(e.current.startswith("p2.") and e.previous and e.previous.startswith("p1.") for e in epochs)
    assert running.service.metrics.key_version.labels("previous")._value.get() == 1
    # What the SDK calls: any pseudonymizer, the pairs of an epoch-aware one, no previous from the rest.
    assert pseudonym_epochs(running.client(), [PHONE]) == [epochs[0]]
    assert pseudonym_epochs(new_key, [PHONE]) == [EpochPseudonyms(epochs[0].current, None)]


def test_a_client_whose_registry_is_behind_the_rotation_still_gets_verified_old_pseudonyms(
    running: Running,
) -> None:
    behind = running.domain.registry
    data, _, _ = rotated(running.domain)
    assert running.in_force.offer(data).taken
    assert running.client(behind).epochs([PHONE]) == [
        EpochPseudonyms(running.domain.pseudonymizer_key().pseudonyms([PHONE])[0], None)
    ]


def test_after_the_transition_the_old_key_file_is_destroyed_and_old_epoch_evaluations_are_refused(
    running: Running,
) -> None:
    data, registry, new_key = rotated(running.domain)
    assert running.in_force.offer(data).taken
    during = running.client(registry)
    during.epochs([PHONE])
    old_file = running.domain.home / trust.PSEUDONYMIZER_KEY
    assert old_file.exists()
    end, _after = ended(running.domain, registry)
    assert running.in_force.offer(end).taken
    assert running.client().epochs([PHONE]) == [EpochPseudonyms(new_key.pseudonyms([PHONE])[0], None)]
    assert not old_file.exists()
    assert set(running.service.keys) == {2}
    assert running.service.metrics.keys_destroyed.labels("destroyed")._value.get() == 1
    assert (running.domain.home / "pseudonymizer" / core.key_file_name(2)).exists()
    # A client still on the transition's registry asks for v1 too: refused, retryable, not a bad proof.
    with pytest.raises(PseudonymizerUnavailableError) as caught:
        running.client(registry).epochs([ID_NUMBER])
    assert caught.value.code == "key_not_named"
    with pytest.raises(PseudonymizerUnavailableError):
        running.client(running.domain.registry).pseudonyms([ID_NUMBER])  # v1 alone


def test_a_key_prepared_for_the_next_rotation_is_not_destroyed(running: Running) -> None:
    data, registry, _ = rotated(running.domain)
    prepared = running.domain.home / "pseudonymizer" / core.key_file_name(3)
    trust.create_pseudonymizer_key(running.domain.home, 3, name=prepared.name)
    assert running.in_force.offer(data).taken
    end, _ = ended(running.domain, registry)
    assert running.in_force.offer(end).taken
    running.service.reconcile()
    assert prepared.exists()
    assert stat.S_IMODE(prepared.stat().st_mode) == 0o600


def test_the_service_refuses_to_start_without_the_previous_key_the_registry_names(
    oblivious: DemoDomain,
) -> None:
    _, registry, _ = rotated(oblivious)
    (oblivious.home / trust.PSEUDONYMIZER_KEY).unlink()
    with pytest.raises(UsageError, match="names pseudonymizer key v1"):
        load_keys(oblivious.home, registry)


def previous_from_another_key(domain: DemoDomain, registry: Registry) -> web.Application:
    """A pseudonymizer that answers the current epoch honestly and the previous one with another key."""
    keys = {v: k for v, k in load_keys(domain.home, registry).items()}

    async def evaluate(request: web.Request) -> web.Response:
        parsed = core.EvaluateRequest.from_bytes(await request.read())
        other = core.PseudonymizerKey(version=1, key=oprf.generate_key_pair())
        answer = core.answer(keys[2], parsed, previous=other)
        answer["previous"]["public"] = crypto.b64e(keys[1].key.public)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/evaluate", evaluate)
    return app


def test_a_previous_epoch_evaluated_with_another_key_is_refused(oblivious: DemoDomain) -> None:
    _, registry, _ = rotated(oblivious)
    served = Served(previous_from_another_key(oblivious, registry))
    try:
        client = ObliviousPseudonymizer(
            keystore=oblivious.keys("police"),
            registry=lambda: registry,
            url=served.url,
            clock=lambda: NOW,
            metrics=ClientMetrics(CollectorRegistry()),
        )
        with pytest.raises(BadSignatureError):
            client.epochs([PHONE])
        assert client.metrics.requests.labels("bad_proof")._value.get() == 1
    finally:
        served.close()


# --------------------------------------------------------------------------- from a sealed HMAC key


def test_a_sealed_key_domain_moves_over_with_the_hmac_pseudonym_as_the_previous_one_then_drops_it(
    sealed: DemoDomain,
) -> None:
    hmac_key = sealed.pseudonym_key()
    key = trust.create_pseudonymizer_key(sealed.home, 2, name=core.key_file_name(2))
    change = admin.migrate_to_pseudonymizer(
        sealed.registry.document,
        key.role("http://127.0.0.1:9"),
        transition_until=UNTIL,
        now=NOW + timedelta(minutes=1),
        lifetime=timedelta(days=90),
    )
    _data, migrating = signed(sealed, change.document)
    assert migrating.pseudonym_key("police", sealed.keys("police").encryption) == hmac_key
    in_force = RegistryInForce(migrating, trusted_roots=migrating.document.roots, clock=lambda: NOW)
    service = Pseudonymizer(
        PseudonymizerSettings(),
        key=load_keys(sealed.home, migrating),
        registry=in_force,
        trail=None,
        clock=lambda: NOW,
        metrics=PseudonymizerMetrics(CollectorRegistry()),
        key_folder=sealed.home / "pseudonymizer",
    )
    served = Served(service.application())
    try:
        client = ObliviousPseudonymizer(
            keystore=sealed.keys("police"),
            registry=lambda: in_force.current,
            url=served.url,
            clock=lambda: NOW,
            metrics=ClientMetrics(CollectorRegistry()),
        )
        (during,) = client.epochs([PHONE])
        assert during == EpochPseudonyms(key.pseudonyms([PHONE])[0], pseudonym(hmac_key, PHONE))
        assert during.current.startswith("p2.")
        assert during.previous is not None
        assert during.previous.startswith("p1.")
        end = admin.end_pseudonymizer_transition(
            migrating.document, now=NOW + timedelta(minutes=2), lifetime=timedelta(days=90), force=True
        )
        assert end.document.pseudonym_key is None
        end_data, _ = signed(sealed, end.document)
        assert in_force.offer(end_data).taken
        assert client.epochs([PHONE]) == [EpochPseudonyms(during.current, None)]
        assert client._sealed is None  # the key left the client's memory with the registry
        with pytest.raises(UsageError, match="seals no pseudonym key"):
            in_force.current.pseudonym_key("police", sealed.keys("police").encryption)
    finally:
        served.close()


def test_migrating_refuses_a_pseudonymizer_version_that_could_collide_with_the_sealed_keys(
    sealed: DemoDomain,
) -> None:
    key = core.PseudonymizerKey(version=1, key=oprf.generate_key_pair())
    with pytest.raises(UsageError, match="above the sealed key"):
        admin.migrate_to_pseudonymizer(
            sealed.registry.document, key.role("http://127.0.0.1:9"), transition_until=UNTIL, now=NOW,
            lifetime=timedelta(days=90),
        )  # fmt: skip


def test_ending_a_transition_before_its_time_is_refused_without_force(oblivious: DemoDomain) -> None:
    _, registry, _ = rotated(oblivious)
    with pytest.raises(UsageError, match="pass --force"):
        admin.end_pseudonymizer_transition(
            registry.document, now=NOW + timedelta(days=30), lifetime=timedelta(days=90)
        )
    done = admin.end_pseudonymizer_transition(registry.document, now=UNTIL, lifetime=timedelta(days=90))
    assert done.document.pseudonymizer is not None
    assert done.document.pseudonymizer.previous is None
    with pytest.raises(UsageError, match="no pseudonymizer key transition"):
        admin.end_pseudonymizer_transition(done.document, now=UNTIL, lifetime=timedelta(days=90))
    with pytest.raises(UsageError, match="under way"):
        admin.rotate_pseudonymizer(
            registry.document, version=3, public=OTHER_PUBLIC, transition_until=UNTIL + timedelta(days=1),
            now=NOW + timedelta(minutes=5), lifetime=timedelta(days=90),
        )  # fmt: skip


# --------------------------------------------------------------------------- what a lead's header links


class InTransition:
    """A pseudonymizer during a key transition: each identifier's pseudonym under v2 and under v1."""

    @staticmethod
    def of(version: int, canonical: str) -> str:
        digest = hashlib.sha256(f"{version}:{canonical}".encode()).digest()
        return f"p{version}." + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
        return [e.current for e in self.epochs(canonicals)]

    def epochs(self, canonicals: Sequence[str]) -> list[EpochPseudonyms]:
        return [EpochPseudonyms(self.of(2, c), self.of(1, c)) for c in canonicals]


def test_during_a_transition_a_leads_links_carry_the_victims_previous_pseudonyms_the_subjects_first() -> None:
    lead = {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "renhe",
        "victim": {"name": "张某某", "id_number": "11010519491231002X", "phone": "13800138000"},
        "minor": False,
        "risk_indicators": [],
        "narrative": "……",
        "requests_joint_meeting": False,
    }
    identities = lead_identities(InTransition(), lead, token="t")
    of = InTransition.of
    assert identities.data["victim_pseudonym"] == of(2, ID_NUMBER)
    assert identities.links == (of(1, ID_NUMBER), of(2, PHONE), of(1, PHONE))
    # Outside a transition (a pseudonymizer with no previous epoch) the links are the other identifiers'.
    key = core.PseudonymizerKey(2, oprf.generate_key_pair())
    assert lead_identities(key, lead, token="t").links == tuple(key.pseudonyms([PHONE]))
