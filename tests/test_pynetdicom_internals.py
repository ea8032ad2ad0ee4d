"""pacs.dimse.pynetdicom_internals reaches into private pynetdicom code: this fails loudly on
a pynetdicom release it was not written for, and names each internal that has moved."""

from __future__ import annotations

import inspect
import queue
import threading

import pynetdicom
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

from pacs.dimse import pynetdicom_internals
from pacs.dimse.pynetdicom_internals import WRITTEN_FOR


def test_installed_pynetdicom_is_the_one_the_patches_were_written_for() -> None:
    assert pynetdicom.__version__ == WRITTEN_FOR, (
        f"pynetdicom {pynetdicom.__version__} is installed, but "
        f"pacs/dimse/pynetdicom_internals.py was written against {WRITTEN_FOR}: re-read "
        "pynetdicom's Association, DIMSEServiceProvider, DULServiceProvider, AssociationSocket, "
        "RequestHandler and _config for every function there, then raise WRITTEN_FOR"
    )


def test_every_internal_used_still_exists() -> None:
    assoc = Association(AE(), "acceptor")
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert isinstance(assoc._is_paused, bool)
    assert callable(assoc._handle_no_response)
    assert list(inspect.signature(assoc._check_received_status).parameters) == ["rsp"]
    send_c_store = inspect.signature(assoc.send_c_store).parameters
    assert {"msg_id", "originator_aet", "originator_id"} <= set(send_c_store)
    assert isinstance(assoc.dimse.msg_queue, queue.Queue)
    assert isinstance(assoc.dimse.dimse_timeout, int | float | None)
    assert list(inspect.signature(DIMSEServiceProvider.get_msg).parameters) == ["self", "block"]
    assert list(inspect.signature(DIMSEServiceProvider.send_msg).parameters) == [
        "self",
        "primitive",
        "context_id",
    ]
    assert isinstance(assoc.dul._run_loop_delay, float)
    assert list(inspect.signature(AssociationSocket.recv).parameters) == ["self", "nr_bytes"]
    assert "_create_association" in vars(RequestHandler)
    # SharedContexts relies on the server's contexts being deep-copied per association here
    assert "deepcopy(self.server.contexts)" in inspect.getsource(RequestHandler._create_association)
    assert {"LOG_HANDLER_LEVEL", "LOG_REQUEST_IDENTIFIERS"} <= set(vars(_config))


def test_acceptor_speed_ups_replace_only_that_associations_methods() -> None:
    tuned, other = Association(AE(), "acceptor"), Association(AE(), "acceptor")
    pynetdicom_internals.wake_on_message(tuned)
    assert tuned.dimse.get_msg is not other.dimse.get_msg
    assert tuned.dimse.get_msg(block=False) == (None, None)  # empty queue: waits IDLE_WAIT
    assert tuned.dul._run_loop_delay == pynetdicom_internals.DUL_LOOP_DELAY
    assert other.dul._run_loop_delay != pynetdicom_internals.DUL_LOOP_DELAY
