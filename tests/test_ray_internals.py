"""What `search.runtime.ray_internals` relies on in Ray's internals is still there, in the shape it
uses: a Ray upgrade that moves or renames any of it turns this red before a search breaks."""

import inspect
import subprocess

import ray
import ray._private.services as services
import ray._private.utils as ray_utils
from ray._raylet import InnerGcsClient
from ray.exceptions import AuthenticationError


def test_ray_starts_its_processes_through_console_popen():
    assert issubclass(services.ConsolePopen, subprocess.Popen)
    # the patched name is looked up when a process starts (a module global, not bound at import)
    assert "ConsolePopen(" in inspect.getsource(services.start_ray_process)
    assert callable(ray_utils.detect_fate_sharing_support)


def test_the_gcs_client_asks_with_an_address_a_cluster_id_and_a_timeout():
    assert callable(InnerGcsClient.standalone)
    assert issubclass(AuthenticationError, Exception)
    assert ray.__version__.split(".")[0] == "2"
