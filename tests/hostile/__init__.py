"""The hostile suite: the AM API's call boundary as a typed contract (issue 11).

Hostile or malformed input, sent over real TLS on 127.0.0.1 to a real aggregate built from an ``sfa-omf init``
directory (AM API v3 at ``/``, v2 at ``/am2``) and to its registry, one server per test module, with a slice that
already holds a provisioned booking (so that state-changing calls have something to damage). Every case asserts:

- the exact expected answer, kept beside the case in the tables: ``Env(code, words...)`` for an AM API envelope,
  ``Fault(code, words...)`` for an XML-RPC fault (the registry's way; the transport's for bodies it cannot read);
- a non-empty message that names the problem (each word must appear in it, in any case);
- no traceback, "internal error", ERROR line or ``geni_code=5`` in the server's log (Python logging and Twisted's);
- no state change: the advertisement (ListResources with every lease), Describe of the slice, the calendar's
  leases, the slices' users and keys, the registry's records and the authority's issued GIDs are the same before
  and after (generation timestamps and times that move with the clock are left out). A case that changed something
  is reported and the world is put back for the next case.

The classes are the issue's:

=====  ===========================================================================================  ==========
class  what                                                                                         expected
=====  ===========================================================================================  ==========
1      a half-done Allocate/CreateSliver/GetTicket: geni_users/sfa_users/users of the wrong shape,   1
       user URNs that are not user URNs, keys that are not one-line SSH public keys
2      wrong types anywhere: slice URN, URN lists, credentials, options, rspec, action, bool-like    1
       options, geni_rspec_version, Provision's and geni_update_users' users, registry records
       (hrn, keys, reg-keys, email, researchers, type)
3      times parsable but absurd or beyond the policy (+999999w, years 9999/0001 with offsets, SFA   7 (1 when
       start_time 253402300799, duration 999999999999999999); unreadable times                      unreadable)
4      v3 Renew / v2 RenewSliver with a time that is not a string, int or dateTime                  1
5      a list or struct nested 50 000 deep in any argument of any method                            fault 1
6      malformed XML-RPC bodies (member without name, bogus encoding, truncated, not XML, no        fault 1,
       methodName, invalid base64/int/double/boolean/dateTime, invalid UTF-8)                       HTTP 200
7      Content-Length of 10 GiB with 64 KiB sent, or over the limit with nothing sent; a header or   fault 6 or
       request line over 16 KiB; 64 KiB of headers: answered within 5 s and the connection closed   413; 400/431
8      an Allocate of 5 000 nodes, over the policy's per-request node limit                         7
9      Describe without geni_rspec_version; an RSpec sent as base64 or holding invalid UTF-8        1
typed  well-typed hostile input that keeps today's answers: forged, expired, mismatched and         20-23, 3,
       untrusted credentials, conflicts, unknown slivers, hostile RSpecs, unknown methods            7, 12, ...
=====  ===========================================================================================  ==========

Files: ``test_am_v3.py``, ``test_am_v2.py``, ``test_registry.py`` (tables of calls), ``test_transport.py`` (raw
bytes on TLS sockets: classes 5, 6, 7 and part of 9), ``test_argument_types.py`` (hypothesis over argument types for
every method: never geni_code 5 or fault 5, and a refused call changes nothing), ``values.py`` (the hostile values the
AM tables share), ``harness.py`` (the world, snapshots, the log trap and the case runner), ``test_harness.py``
(the harness's own checks can fail: a state change, a crash in the log and a wrong answer are each reported).
A case id reads ``c<class>-<api>-<method>-<what>``, so ``pytest tests/hostile -k c3-`` runs one class.
"""
