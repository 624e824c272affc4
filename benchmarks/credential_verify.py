"""Credential verifications per second: sfa-omf's in-process verifier against the anchors' xmlsec1 subprocesses.

Run from the repository root, with the project's virtualenv:

    python benchmarks/credential_verify.py                  # 2 s per measurement
    python benchmarks/credential_verify.py --seconds 5 --rounds 20
    python benchmarks/credential_verify.py --no-freeze      # start-up objects left in the collector's walks

Six methods, for a plain slice credential (one signature) and a credential delegated by alice to bob (two):

* floor   — the work no verifier avoids, with lxml and cryptography alone (``floor_check``): the reference of
            "vs floor".
* libxmlsec1 — the same with each signature checked by libxmlsec1 (the xmlsec binding) instead: what the floor was
            before sfa-omf checked signatures directly (``libxmlsec1_floor_check``).
* new certs — cold, on a first sight: the process's parsed certificates, verified links and signer keys are
            forgotten before each call (untimed).
* cold    — ``CredentialVerifier(roots)`` without a cache: ``verify`` (XML parse, every signature checked in-process,
            signer/owner/target chains, issuer and delegation rules) then ``authorize``
            (caller, target, privilege for ``createsliver``), every time.
* cached  — ``CredentialVerifier(roots, VerdictCache())`` verifying the same credential again: ``verify`` is a
            digest and a cache lookup, ``authorize`` still runs.
* xmlsec1 — what SFA and gcf do: one ``xmlsec1 --verify --trusted-pem ROOT --node-id Sig_refN FILE`` subprocess per
            signature. Only the subprocesses are timed (the credential file is written once), so this is a lower
            bound of the anchors' cost: they also write a temporary file and check chains and privileges in Python.

Before timing, every method must accept each credential, and both xmlsec1 and our verifier must refuse a tampered
copy (the root credential's expiry pushed ten years on), so the figures are for real verification.
Each measurement runs for ``--seconds`` and at least ``--rounds`` iterations, capped at ``--max-rounds``.
Standard library only, apart from sfa-omf itself. Without xmlsec1 its rows say why they were not measured.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from sfa_omf.errors import TrustError
from sfa_omf.registry.bootstrap import init_directory
from sfa_omf.server.gc_tuning import freeze_start_up_objects
from sfa_omf.times import utcnow
from sfa_omf.trust.credential import delegate_credential
from sfa_omf.trust.gid import Gid, load_gid_chain_file
from sfa_omf.trust.pki import load_private_key_file
from sfa_omf.trust.roots import TrustedRoots, load_trusted_roots
from sfa_omf.trust.verifier import CredentialVerifier, VerdictCache, forget_certificates
from sfa_omf.trust.xmldsig import DSIG_NS as DSIG
from sfa_omf.trust.xmldsig import RSA_SHA256, SHA256, canonical_subtree

XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
XMLSEC: Any = importlib.import_module("xmlsec")  # untyped, as in sfa_omf/trust/xmldsig.py

AUTHORITY = "testbed"
TARGET_URN = "urn:publicid:IDN+testbed+slice+demo"
OPERATION = "createsliver"
DEFAULT_XMLSEC1 = "/usr/bin/xmlsec1"
SUBPROCESS_TIMEOUT = 30.0  # seconds; one xmlsec1 run takes milliseconds
INSTALL_HINT = "apt-get install xmlsec1"


@dataclass(frozen=True)
class Fixture:
    """One credential to verify, on disk (for xmlsec1) and in memory (for us)."""

    kind: str
    path: str
    xml: bytes
    signature_ids: tuple[str, ...]
    caller: Gid


@dataclass(frozen=True)
class Timing:
    iterations: int
    elapsed: float

    @property
    def per_second(self) -> float:
        return self.iterations / self.elapsed if self.elapsed > 0 else float("inf")

    @property
    def mean_ms(self) -> float:
        return 1000.0 * self.elapsed / self.iterations


@dataclass(frozen=True)
class Row:
    kind: str
    method: str
    timing: Timing | None
    note: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement (default 2)")
    parser.add_argument(
        "--rounds", "--min-iterations", type=int, default=5, help="minimum iterations per measurement (default 5)"
    )
    parser.add_argument(
        "--max-rounds", type=int, default=1_000_000, help="maximum iterations per measurement (default 1000000)"
    )
    parser.add_argument("--xmlsec1", default=DEFAULT_XMLSEC1, help=f"xmlsec1 binary (default {DEFAULT_XMLSEC1})")
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="leave the start-up objects in the garbage collector's walks (what a process that does not call"
        " gc.freeze() pays; `sfa-omf serve` freezes them)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.max_rounds < args.rounds:
        parser.error("need --seconds > 0 and 1 <= --rounds <= --max-rounds")
    return args


# -- machine facts -------------------------------------------------------------------------------------------------
def find_xmlsec1(wanted: str) -> tuple[str | None, str]:
    """The xmlsec1 binary to use, or None and the reason it is not usable."""
    if os.path.isfile(wanted) and os.access(wanted, os.X_OK):
        return wanted, ""
    found = shutil.which("xmlsec1")
    if found:
        return found, ""
    return None, f"xmlsec1 not found ({wanted} missing and none on PATH); install it: {INSTALL_HINT}"


def xmlsec1_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return (done.stdout or done.stderr).strip() or f"unknown (exit code {done.returncode})"


def binding_version() -> str:
    """The xmlsec binding's version and the libxmlsec1 it links (a wheel may bundle its own, not Debian's)."""
    try:
        xmlsec: Any = importlib.import_module("xmlsec")  # its bundled stubs lack get_libxmlsec_version
    except ImportError as exc:
        return f"not importable ({exc})"
    libxmlsec = ".".join(str(part) for part in xmlsec.get_libxmlsec_version())
    try:
        package = importlib.metadata.version("xmlsec")
    except importlib.metadata.PackageNotFoundError:
        package = "?"
    return f"python-xmlsec {package}, linked libxmlsec1 {libxmlsec}"


def system_cas() -> str:
    """The OpenSSL default CA bundle: xmlsec1 (OpenSSL engine) reads it on every start, whatever --trusted-pem says."""
    cafile = ssl.get_default_verify_paths().cafile
    if not cafile:
        return "none found"
    try:
        with open(cafile, "rb") as handle:
            count = handle.read().count(b"-----BEGIN CERTIFICATE-----")
    except OSError as exc:
        return f"{cafile} (unreadable: {exc})"
    return f"{cafile} ({count} certificates; xmlsec1 loads it on every run)"


def print_facts(xmlsec1: str | None, why_not: str, args: argparse.Namespace) -> None:
    print("Credential verification benchmark (sfa-omf)")
    print(f"  python        {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
    print(f"  cpu count     {os.cpu_count()}")
    print(f"  xmlsec1       {xmlsec1_version(xmlsec1) + ' at ' + xmlsec1 if xmlsec1 else why_not}")
    print(f"  binding       {binding_version()}")
    print(f"  system CAs    {system_cas()}")
    print(f"  budget        {args.seconds:g} s and >= {args.rounds} iterations per measurement (<= {args.max_rounds})")
    print(f"  collector     {'start-up objects left in its walks' if args.no_freeze else 'start-up objects frozen'}")
    print()


# -- credentials ---------------------------------------------------------------------------------------------------
def make_fixtures(workdir: str) -> tuple[TrustedRoots, str, list[Fixture]]:
    """An authority with alice and bob; alice's slice credential, and the same delegated by alice to bob."""
    directory = os.path.join(workdir, "authority")
    init_directory(directory, AUTHORITY, ("alice", "bob"))
    roots_dir = os.path.join(directory, "trusted_roots")
    roots = load_trusted_roots(roots_dir)
    root_files = sorted(os.path.join(roots_dir, name) for name in os.listdir(roots_dir))
    if len(root_files) != 1:
        raise SystemExit(f"expected one trusted root in {roots_dir}, found {root_files}")
    sfi = os.path.join(directory, "users", "alice", "sfi")
    alice_chain = load_gid_chain_file(os.path.join(sfi, f"{AUTHORITY}.alice.user.gid"))
    alice_key = load_private_key_file(os.path.join(sfi, f"{AUTHORITY}.alice.pkey"))
    bob_chain = load_gid_chain_file(os.path.join(directory, "gids", f"{AUTHORITY}.bob.gid"))
    slice_path = os.path.join(sfi, f"{AUTHORITY}.alice-{AUTHORITY}.demo.slice.cred")
    with open(slice_path, "rb") as handle:
        slice_xml = handle.read()
    delegated_xml = delegate_credential(
        slice_xml, to_chain=bob_chain, key=alice_key, delegator_chain=alice_chain
    ).encode("utf-8")
    delegated_path = os.path.join(workdir, "delegated.cred")
    with open(delegated_path, "wb") as handle:
        handle.write(delegated_xml)
    fixtures = [
        Fixture("slice, 1 signature", slice_path, slice_xml, ("Sig_ref0",), alice_chain[0]),
        Fixture("delegated, 2 signatures", delegated_path, delegated_xml, ("Sig_ref0", "Sig_ref1"), bob_chain[0]),
    ]
    return roots, root_files[0], fixtures


def tampered(xml: bytes) -> bytes:
    """The credential with the root credential's expiry (the last <expires>) moved ten years later."""
    matches = list(re.finditer(rb"<expires>(\d{4})", xml))
    if not matches:
        raise SystemExit("cannot tamper: the credential has no <expires>")
    last = matches[-1]
    later = str(int(last.group(1)) + 10).encode("ascii")
    return xml[: last.start(1)] + later + xml[last.end(1) :]


# -- the three methods ---------------------------------------------------------------------------------------------
def in_process(verifier: CredentialVerifier, fixture: Fixture, at: datetime) -> Callable[[], None]:
    def run() -> None:
        verified = verifier.verify(fixture.xml, at)
        verifier.authorize(verified, fixture.caller, TARGET_URN, OPERATION)

    return run


def floor_check(xml: bytes, root: x509.Certificate) -> None:
    """The work no verifier of this credential avoids, with nothing but the libraries (the issue's floor: "C14N +
    digests + the RSA checks that cannot be avoided, with lxml/cryptography"): parse the document (lxml); for each
    signature, the C14N 1.0 of the element it names and of its SignedInfo (libxml2's, through lxml: the subset
    rebuilt as a document of its own, ``canonical_subtree``, as a subset's C14N must carry its inherited namespaces
    and xml:* attributes), the SHA-256 digest, and the RSA check with the key of the signature's certificate
    (cryptography); parse each distinct certificate the document carries once and check each distinct link (child,
    issuer) once, up to the root. No rule (issuer, delegation, privileges, names, validity) and no safety check of
    the XML: a lower bound, not a verifier. Raises InvalidSignature."""
    document = etree.fromstring(xml)
    for signature in document.iter(f"{{{DSIG}}}Signature"):
        signed_info = signature.find(f"{{{DSIG}}}SignedInfo")
        reference = signed_info.find(f"{{{DSIG}}}Reference")
        if signed_info.find(f"{{{DSIG}}}SignatureMethod").get("Algorithm") != RSA_SHA256:
            raise SystemExit("the floor knows RSA-SHA256 only, which sfa-omf signs with")
        if reference.find(f"{{{DSIG}}}DigestMethod").get("Algorithm") != SHA256:
            raise SystemExit("the floor knows SHA-256 digests only, which sfa-omf signs with")
        target = document.find(f".//*[@{XML_ID}='{reference.get('URI')[1:]}']")
        digest = base64.b64decode(reference.findtext(f"{{{DSIG}}}DigestValue") or "")
        if hashlib.sha256(canonical_subtree(target)).digest() != digest:
            raise InvalidSignature("the digest of the signed element differs")
        der = base64.b64decode(signature.findtext(f".//{{{DSIG}}}X509Certificate") or "")
        public_key = x509.load_der_x509_certificate(der).public_key()
        value = base64.b64decode(signature.findtext(f"{{{DSIG}}}SignatureValue") or "")
        public_key.verify(value, canonical_subtree(signed_info), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg, arg-type]
    check_certificates_once(document, root)


def libxmlsec1_floor_check(xml: bytes, root: x509.Certificate) -> None:
    """``floor_check`` with each signature checked by libxmlsec1 (C14N, digest, RSA; the signer's bare public key
    loaded from its certificate) instead of lxml and cryptography. Raises InvalidSignature or xmlsec's error."""
    document = etree.fromstring(xml)
    for signature in document.iter(f"{{{DSIG}}}Signature"):
        reference = signature.find(f"{{{DSIG}}}SignedInfo/{{{DSIG}}}Reference")
        target = document.find(f".//*[@{XML_ID}='{reference.get('URI')[1:]}']")
        context = XMLSEC.SignatureContext()
        context.register_id(target, "id", "http://www.w3.org/XML/1998/namespace")
        der = base64.b64decode(signature.findtext(f".//{{{DSIG}}}X509Certificate") or "")
        # The signer's bare public key: copied into the context in under a microsecond, where a key loaded from the
        # certificate drags the certificate along and its copy costs about as much as loading it.
        public_key = x509.load_der_x509_certificate(der).public_key()
        spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        context.key = XMLSEC.Key.from_memory(spki, XMLSEC.KeyFormat.DER, None)
        try:
            context.verify(signature)
        except XMLSEC.Error as exc:
            raise InvalidSignature(str(exc)) from exc
    check_certificates_once(document, root)


def check_certificates_once(document: etree._Element, root: x509.Certificate) -> None:
    """Parse each distinct certificate the document carries once; check each distinct link once, up to the root."""
    chains: list[list[x509.Certificate]] = []
    parsed: dict[bytes, x509.Certificate] = {}
    for element in document.iter("owner_gid", "target_gid", f"{{{DSIG}}}X509Data"):
        if element.tag == f"{{{DSIG}}}X509Data":
            ders = [base64.b64decode(node.text or "") for node in element.iter(f"{{{DSIG}}}X509Certificate")]
        else:
            ders = [pem_block_der(block) for block in (element.text or "").split("-----END CERTIFICATE-----")[:-1]]
        chains.append([parsed.setdefault(der, x509.load_der_x509_certificate(der)) for der in ders])
    links: set[tuple[int, int]] = set()
    for chain in chains:
        for child, parent in zip(chain, [*chain[1:], root], strict=True):
            if child == parent or (id(child), id(parent)) in links:
                continue
            links.add((id(child), id(parent)))
            child.verify_directly_issued_by(parent)


def pem_block_der(block: str) -> bytes:
    body = block.split("-----BEGIN CERTIFICATE-----", 1)[1]
    return base64.b64decode("".join(body.split()))


def floor(
    fixture: Fixture, root: x509.Certificate, check: Callable[[bytes, x509.Certificate], None]
) -> Callable[[], None]:
    def run() -> None:
        check(fixture.xml, root)

    return run


def first_sight(verifier: CredentialVerifier, fixture: Fixture, at: datetime) -> Callable[[], None]:
    """cold, and the process has never seen the credential's certificates: run after ``forget_certificates`` (the
    parsed GIDs, verified links and signer keys forgotten), which measure_interleaved calls untimed before it."""
    return in_process(verifier, fixture, at)


def xmlsec1_failures(binary: str, root_file: str, path: str, signature_ids: tuple[str, ...]) -> list[str]:
    """Run one xmlsec1 --verify per signature, as SFA and gcf do; return the signatures that did not verify."""
    failed = []
    for node_id in signature_ids:
        done = subprocess.run(
            [binary, "--verify", "--trusted-pem", root_file, "--node-id", node_id, path],
            capture_output=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
        if done.returncode != 0:
            failed.append(f"{node_id}: exit {done.returncode}")
    return failed


def with_xmlsec1(binary: str, root_file: str, fixture: Fixture) -> Callable[[], None]:
    def run() -> None:
        failed = xmlsec1_failures(binary, root_file, fixture.path, fixture.signature_ids)
        if failed:
            raise RuntimeError(f"xmlsec1 stopped accepting {fixture.path}: {', '.join(failed)}")

    return run


def measure(run: Callable[[], None], seconds: float, min_rounds: int, max_rounds: int) -> Timing:
    """One untimed warm-up call, then calls until the budget is spent and min_rounds are done (max_rounds at most)."""
    run()
    count = 0
    start = now = time.perf_counter()
    deadline = start + seconds
    while count < max_rounds and (count < min_rounds or now < deadline):
        run()
        count += 1
        now = time.perf_counter()
    return Timing(iterations=count, elapsed=now - start)


class GcClock:
    """Time spent in the cyclic garbage collector (``gc.callbacks``) while a timed call runs, by method."""

    def __init__(self) -> None:
        self.running: str | None = None
        self.spent: dict[str, float] = {}
        self.collections: dict[str, int] = {}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self.running is not None:
            self.spent[self.running] = self.spent.get(self.running, 0.0) + time.perf_counter() - self._started
            self.collections[self.running] = self.collections.get(self.running, 0) + 1


def measure_interleaved(
    runs: dict[str, Callable[[], None]],
    seconds: float,
    min_rounds: int,
    prepare: dict[str, Callable[[], None]] | None = None,
    clock: GcClock | None = None,
) -> dict[str, Timing]:
    """The in-process methods in turns (one call of each per round, for ``seconds`` in all and at least
    ``min_rounds`` rounds), each method's figure the median of its calls: on a shared, loaded machine the load then
    falls on every method alike, and a spike moves no median. Timing.mean_ms is that median.

    ``prepare[name]``, when given, runs before each call of that method, outside its timing (the first sight's
    forgetting of the caches: freeing what they held is not part of a verification). ``clock`` is told which
    method's timed call is running, to attribute collections."""
    prepare = prepare or {}
    for run in runs.values():
        run()  # warm-up, untimed
    times: dict[str, list[float]] = {name: [] for name in runs}
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < min_rounds or time.perf_counter() < deadline:
        for name, run in runs.items():
            if name in prepare:
                prepare[name]()
            if clock is not None:
                clock.running = name
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
            if clock is not None:
                clock.running = None
        rounds += 1
    return {name: Timing(len(spent), statistics.median(spent) * len(spent)) for name, spent in times.items()}


# -- checks before timing ------------------------------------------------------------------------------------------
def check_methods(
    roots: TrustedRoots, root_file: str, fixtures: list[Fixture], xmlsec1: str | None, at: datetime
) -> str:
    """Every method accepts every credential; xmlsec1 and our verifier refuse tampered copies.

    Return why xmlsec1 cannot be measured ("" when it can). Exit when a check that must hold does not.
    """
    why_not = ""
    for fixture in fixtures:
        in_process(CredentialVerifier(roots), fixture, at)()  # raises TrustError if refused
        bad = tampered(fixture.xml)
        for check in (floor_check, libxmlsec1_floor_check):
            check(fixture.xml, roots.anchors[0].certificate)
            try:
                check(bad, roots.anchors[0].certificate)
            except InvalidSignature:
                pass
            else:
                raise SystemExit(f"{check.__name__} accepted a tampered {fixture.kind} credential: it is not checking")
        try:
            CredentialVerifier(roots).verify(bad, at)
        except TrustError as exc:
            ours = f"refused ({exc.reason.name})"
        else:
            raise SystemExit(f"our verifier accepted a tampered {fixture.kind} credential: nothing to benchmark")
        lines = [f"  {fixture.kind:<24} sfa-omf: accepts it, tampered copy {ours}"]
        if xmlsec1 is not None:
            try:
                failed = xmlsec1_failures(xmlsec1, root_file, fixture.path, fixture.signature_ids)
                if failed:
                    raise SystemExit(f"xmlsec1 refused the genuine {fixture.kind} credential: {', '.join(failed)}")
                with tempfile.NamedTemporaryFile(suffix=".cred", dir=os.path.dirname(fixture.path)) as handle:
                    handle.write(bad)
                    handle.flush()
                    failed = xmlsec1_failures(xmlsec1, root_file, handle.name, fixture.signature_ids)
            except (OSError, subprocess.SubprocessError) as exc:
                why_not = f"xmlsec1 could not be run ({exc}); install it: {INSTALL_HINT}"
                xmlsec1 = None
            else:
                if not failed:
                    raise SystemExit(f"xmlsec1 accepted a tampered {fixture.kind} credential: it is not verifying")
                lines.append(f"  {'':<24} xmlsec1: accepts it, tampered copy refused ({', '.join(failed)})")
        print("\n".join(lines))
    print()
    return why_not


# -- the table -----------------------------------------------------------------------------------------------------
def print_table(rows: list[Row]) -> None:
    header = (
        f"{'credential':<24} {'method':<10} {'iterations':>10} {'verif/s':>10} {'ms/verif':>10} {'vs xmlsec1':>11}"
        f" {'vs floor':>9}"
    )
    print(header)
    print("-" * len(header))
    reference = {row.kind: row.timing for row in rows if row.method == "xmlsec1"}
    floors = {row.kind: row.timing for row in rows if row.method == "floor"}
    for row in rows:
        if row.timing is None:
            print(f"{row.kind:<24} {row.method:<10} not measured (see below)")
            continue
        base = reference.get(row.kind)
        if row.method == "xmlsec1":
            ratio = "1.0x"
        elif base is None:
            ratio = "n/a"
        else:
            ratio = f"{row.timing.per_second / base.per_second:,.1f}x"
        floor_timing = floors.get(row.kind)
        versus_floor = f"{row.timing.mean_ms / floor_timing.mean_ms:.2f}x" if floor_timing else "n/a"
        print(
            f"{row.kind:<24} {row.method:<10} {row.timing.iterations:>10,} {row.timing.per_second:>10,.1f} "
            f"{row.timing.mean_ms:>10.3f} {ratio:>11} {versus_floor:>9}"
        )


def print_collector(measured: list[tuple[str, dict[str, Timing], GcClock]]) -> None:
    """The cyclic collector's share of each in-process method: collections during its timed calls, and their mean
    time per call (the medians above may or may not include a call that met a collection)."""
    print("\nGarbage collector during the timed calls (gc.callbacks: collections, and their time per call):")
    for kind, timings, clock in measured:
        parts = []
        for method, timing in timings.items():
            spent = clock.spent.get(method, 0.0)
            count = clock.collections.get(method, 0)
            parts.append(f"{method} {count} in {1e6 * spent / timing.iterations:.1f} us/call")
        print(f"  {kind:<24} " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    xmlsec1, why_not = find_xmlsec1(args.xmlsec1)
    print_facts(xmlsec1, why_not, args)
    with tempfile.TemporaryDirectory(prefix="sfa-omf-bench-") as workdir:
        roots, root_file, fixtures = make_fixtures(workdir)
        # As `sfa-omf serve` does once it is up: what start-up made is frozen out of the collector's walks (without
        # it, the collections a first sight's new objects trigger walk this process's whole heap: 2.6 ms became 6.9).
        if not args.no_freeze:
            freeze_start_up_objects()
        at = utcnow()
        print("Checks before timing (each method must accept the credential; a tampered copy must be refused):")
        problem = check_methods(roots, root_file, fixtures, xmlsec1, at)
        if problem:
            xmlsec1, why_not = None, problem
        rows: list[Row] = []
        collector: list[tuple[str, dict[str, Timing], GcClock]] = []
        for fixture in fixtures:
            cache = VerdictCache()
            clock = GcClock()
            gc.callbacks.append(clock)
            try:
                timings = measure_interleaved(
                    {
                        "floor": floor(fixture, roots.anchors[0].certificate, floor_check),
                        "libxmlsec1": floor(fixture, roots.anchors[0].certificate, libxmlsec1_floor_check),
                        "new certs": first_sight(CredentialVerifier(roots), fixture, at),
                        "cold": in_process(CredentialVerifier(roots), fixture, at),
                        "cached": in_process(CredentialVerifier(roots, cache), fixture, at),
                    },
                    3 * args.seconds,
                    args.rounds,
                    prepare={"new certs": forget_certificates},
                    clock=clock,
                )
            finally:
                gc.callbacks.remove(clock)
            collector.append((fixture.kind, timings, clock))
            if cache.misses != 1 or cache.hits != timings["cached"].iterations:
                raise SystemExit(f"cache did not behave as expected: {cache.hits} hits, {cache.misses} misses")
            rows.extend(Row(fixture.kind, method, timing) for method, timing in timings.items())
            if xmlsec1 is None:
                rows.append(Row(fixture.kind, "xmlsec1", None, why_not))
            else:
                run = with_xmlsec1(xmlsec1, root_file, fixture)
                rows.append(Row(fixture.kind, "xmlsec1", measure(run, args.seconds, args.rounds, args.max_rounds)))
    print_table(rows)
    print_collector(collector)
    if xmlsec1 is None:
        print(f"\nThe xmlsec1 column was not measured: {why_not}")
    print(
        "\nfloor, new certs, cold, cached: run in turns, one call of each per round, for 3x the budget; ms/verif is"
        "\n  the median call (verif/s its inverse); xmlsec1: calls one after another, ms/verif their mean."
        "\nvs xmlsec1 = verifications per second divided by the xmlsec1 method's (one subprocess per signature)."
        "\nvs floor = time per verification divided by the floor's (lxml parse; per signature lxml's C14N, SHA-256 and"
        "\n  cryptography's RSA check; each distinct certificate parsed once, each distinct link checked once; no"
        "\n  rules); libxmlsec1: the same with libxmlsec1 checking each signature (the floor before sfa-omf checked"
        "\n  signatures directly)."
        "\ncold: parse + in-process signature checks + chain checks + authorize, no verdict cache (the process has"
        "\n  seen the certificates before: parsed GIDs, verified links and signer keys are reused);"
        "\nnew certs: the same with those forgotten before each verification (untimed); cached: digest lookup +"
        "\n  authorize."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
