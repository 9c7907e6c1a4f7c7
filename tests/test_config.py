"""`check-config` and the environment: what a newcomer's first commands
find before `serve` does."""

import os
import subprocess
from pathlib import Path

from nodetest import ROOT, free_port, node_binary, node_factory  # noqa: F401 (fixture)

# sysexits' EX_CONFIG: the systemd unit does not restart a node that exits so.
MISCONFIGURED = 78


def check_config(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(node_binary()), "check-config"], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_lists_of_words_come_from_the_environment_comma_separated():
    r = check_config({"PNEUMO__ROUTING__ANALYSE_MODALITIES": "CR,DX",
                      "PNEUMO__ROUTING__ANALYSE_BODY_PARTS": "CHEST",
                      "PNEUMO__LOG__LEVEL": "info,ort=debug"})
    assert r.returncode == 0, r.stderr
    assert 'analyse_modalities = [\n    "CR",\n    "DX",\n]' in r.stdout, r.stdout
    assert 'analyse_body_parts = ["CHEST"]' in r.stdout, r.stdout
    assert 'level = "info,ort=debug"' in r.stdout  # a comma elsewhere is just a comma


def test_values_that_start_a_node_which_takes_or_analyses_nothing_are_refused():
    """Each passed check-config and started a node that refused every
    image (an empty data_dir), listened where no one knew (port 0), failed
    every job as a crash (lease_s = 0), or lost everything at a stop (an
    in-memory database); an empty list from the environment was [""], which
    skipped every image."""
    for key, value, said in [
        ("NODE__DATA_DIR", "", "node.data_dir is empty"),
        ("DICOM__PORT", "0", "dicom.port and http.port must be 1 to 65535"),
        ("HTTP__PORT", "0", "dicom.port and http.port must be 1 to 65535"),
        ("PIPELINE__LEASE_S", "0", "pipeline.lease_s 0 must be at least 30 seconds"),
        ("PIPELINE__CONCURRENCY", "0", "pipeline.concurrency and pipeline.max_attempts"),
        ("DATABASE__URL", "sqlite:", "names no database file"),
        ("DATABASE__URL", "sqlite::memory:", "names no database file"),
        ("DATABASE__URL", "sqlite:file::memory:?cache=shared", "names no database file"),
        ("DATABASE__URL", "sqlite:///dev/null", "which is not a regular file"),
        ("DATABASE__URL", "sqlite:/tmp", "which is not a regular file"),
        ("ROUTING__ANALYSE_MODALITIES", '["CR","DX"]', "comma-separated (CR,DX), not a TOML list"),
        ("DICOM__ALSO_ACCEPT", "CSA", "dicom.also_accept has `CSA`, which is not a SOP Class UID"),
    ]:
        r = check_config({f"PNEUMO__{key}": value})
        assert r.returncode == MISCONFIGURED and said in r.stderr, (key, value, r.stderr)
    r = check_config({"PNEUMO__ROUTING__ANALYSE_MODALITIES": ""})
    assert r.returncode == 0, r.stderr
    assert "analyse_modalities = []" in r.stdout, r.stdout
    r = check_config({"PNEUMO__ROUTING__ANALYSE_MODALITIES": "CR, DX"})  # " DX" matched nothing
    assert r.returncode == 0 and 'analyse_modalities = [\n    "CR",\n    "DX",\n]' in r.stdout, r.stdout


def test_a_configuration_path_that_is_no_file_says_what_it_is(tmp_path):
    """`--config DIR` and `--config /dev/null` said "does not exist"."""
    for path, said in [(tmp_path, "is a directory"), ("/dev/null", "is not a regular file"),
                       (tmp_path / "none.toml", "does not exist")]:
        r = subprocess.run([str(node_binary()), "--config", str(path), "check-config"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == MISCONFIGURED and said in r.stderr, (path, r.stderr)
    r = check_config({"PNEUMO__INFERENCE__MODEL": "/dev/null"})
    assert r.returncode == MISCONFIGURED and "is not a regular file" in r.stderr, r.stderr


def test_a_file_that_is_no_toml_is_named_by_its_full_path_only(tmp_path):
    """The TOML error ended with the file's path relative to the working
    directory ("in ../../srv/pneumo/node.toml") after the full one."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "work").mkdir()
    bad = tmp_path / "conf" / "node.toml"
    bad.write_text("[dicom]\nport = 1\nport = 2\n")
    r = subprocess.run([str(node_binary()), "--config", str(bad), "check-config"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path / "work")
    assert r.returncode == 78, r.stderr
    assert str(bad) in r.stderr and "line 3" in r.stderr, r.stderr
    assert "../conf" not in r.stderr, r.stderr


def test_a_missing_onnx_runtime_library_is_found_by_check_config():
    r = check_config({"PNEUMO__INFERENCE__ORT_LIBRARY": "/nonexistent/libonnxruntime.so"})
    assert r.returncode == MISCONFIGURED
    assert "inference.ort_library" in r.stderr and "does not exist" in r.stderr, r.stderr


def test_a_destination_ae_title_the_standard_does_not_allow_is_refused(tmp_path):
    """A destination's AE title with a backslash, a control character or only
    spaces passed `check-config` and `serve`; every delivery to it then
    failed and was retried for good ("association aborted by the peer",
    "could not encode PDU")."""
    for title in ["A\\\\B", "   ", "A\\u0001B", "A\\tB"]:
        config = tmp_path / "node.toml"
        config.write_text(f'[[destinations]]\nname = "pacs"\nae_title = "{title}"\nhost = "127.0.0.1"\nport = 104\n')
        r = subprocess.run([str(node_binary()), "--config", str(config), "check-config"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode != 0 and "destinations[0]" in r.stderr and "ae_title" in r.stderr, (title, r.stderr)


def test_results_rules_and_a_results_flag_together_are_refused(tmp_path):
    """Two ways of saying where results go: one would be silently ignored."""
    config = tmp_path / "node.toml"
    base = ('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n{flag}'
            '[[routing.results]]\ndestinations = ["pacs"]\ncalling_ae_titles = ["SITE_A"]\n')
    config.write_text(base.format(flag="results = true\n"))
    r = subprocess.run([str(node_binary()), "--config", str(config), "check-config"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode != 0 and "`pacs` has results = true" in r.stderr, r.stderr
    config.write_text(base.format(flag=""))
    r = subprocess.run([str(node_binary()), "--config", str(config), "check-config"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and 'calling_ae_titles = ["SITE_A"]' in r.stdout, r.stderr


def test_a_node_ae_title_with_a_control_character_is_shown_escaped():
    """The refusal printed the title as it was: an escape sequence in it
    reached the admin's terminal."""
    r = check_config({"PNEUMO__DICOM__AE_TITLE": "A\x1b[2JB"})
    assert r.returncode != 0 and "dicom.ae_title" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "A\\u{1b}[2JB" in r.stderr, r.stderr


def test_one_port_for_dicom_and_http_is_refused_by_check_config():
    """`check-config` said OK; `serve` then failed on the second bind."""
    r = check_config({"PNEUMO__DICOM__PORT": "12220", "PNEUMO__HTTP__PORT": "12220"})
    assert r.returncode != 0 and "dicom.port and http.port are both 12220" in r.stderr, r.stderr
    r = check_config({"PNEUMO__DICOM__PORT": "12220", "PNEUMO__HTTP__PORT": "12221"})
    assert r.returncode == 0, r.stderr


def test_a_rule_caller_no_ae_title_can_be_is_refused_and_spaces_do_not_count(tmp_path):
    """A results rule for a caller of 22 characters, with a backslash, or
    blank, passed and matched nothing: that site silently got no results."""
    config = tmp_path / "node.toml"
    dest = '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
    for section in ("results", "forward"):
        for title in ["A_TITLE_OF_22_CHARS_XX", "A\\\\B", "  ", ""]:
            config.write_text(dest + f'[[routing.{section}]]\ndestinations = ["pacs"]\n'
                              f'calling_ae_titles = ["OK", "{title}"]\n')
            r = subprocess.run([str(node_binary()), "--config", str(config), "check-config"],
                               capture_output=True, text=True, cwd=ROOT, timeout=60)
            assert r.returncode != 0 and f"routing.{section}[0].calling_ae_titles" in r.stderr, (title, r.stderr)


def test_a_log_level_that_is_no_level_is_refused(tmp_path):
    """`inf` passed check-config and silenced every line, WARN and ERROR
    included: the filter read it as a target name."""
    config = tmp_path / "node.toml"
    config.write_text('[log]\nlevel = "inf"\n')
    r = subprocess.run([str(node_binary()), "--config", str(config), "check-config"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == MISCONFIGURED and "log.level `inf` is not a level" in r.stderr, r.stderr
    for fine in ("warn", "DEBUG", "info,pneumo_node=debug"):
        assert check_config({"PNEUMO__LOG__LEVEL": fine}).returncode == 0, fine


def test_an_empty_rust_log_leaves_the_configured_level():
    image = ROOT / "fixtures" / "imaging" / "rg1s_mono2.dcm"
    r = subprocess.run([str(node_binary()), "infer", str(image)], env={**os.environ, "RUST_LOG": ""},
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and " INFO " in r.stderr, r.stderr


def test_check_config_reads_the_model_as_serve_would(tmp_path):
    """Only a missing path was found: a file that is no model passed
    `check-config`, and `serve` then failed at every start."""
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx file" * 100)
    r = check_config({"PNEUMO__INFERENCE__MODEL": str(garbage)})
    assert r.returncode == MISCONFIGURED and "inference.model" in r.stderr and str(garbage) in r.stderr, r.stderr
    bad = ROOT / "fixtures" / "models" / "bad"
    contractless = sorted(bad.glob("*contract*.onnx")) or sorted(bad.glob("*.onnx"))
    r = check_config({"PNEUMO__INFERENCE__MODEL": str(contractless[0])})
    assert r.returncode == MISCONFIGURED and "inference.model" in r.stderr, r.stderr


def test_serve_refused_by_its_configuration_exits_78_and_other_start_failures_exit_1(tmp_path):
    """Restart=on-failure restarted a misconfigured node every 5 s for good:
    such a start exits 78, which the unit's RestartPreventExitStatus leaves
    failed; a port still taken (the previous process stopping) exits 1 and
    is restarted."""
    import socket

    base = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(tmp_path / "var"),
            "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port())}

    def serve(**env) -> subprocess.CompletedProcess:
        return subprocess.run([str(node_binary()), "serve"], env={**base, **env},
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx file" * 100)
    # The test machines' library is the CPU-only wheel's: `cuda` cannot be had from it.
    cuda = ({"PNEUMO__INFERENCE__EXECUTION_PROVIDER": "cuda"}, "was built without it (install onnxruntime-gpu")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    r = check_config({"PNEUMO__NODE__DATA_DIR": str(a_file)})
    assert r.returncode == MISCONFIGURED and "is not a directory" in r.stderr, r.stderr
    r = serve(PNEUMO__NODE__DATA_DIR=str(a_file))
    assert r.returncode == MISCONFIGURED and "is not a directory" in r.stderr, r.stderr
    assert check_config(cuda[0]).returncode == MISCONFIGURED and cuda[1] in check_config(cuda[0]).stderr
    for env, needle in (cuda, ({"PNEUMO__INFERENCE__MODEL": str(garbage)}, str(garbage)),
                        ({"PNEUMO__INFERENCE__MODEL": str(tmp_path / "none.onnx")}, "none.onnx"),
                        ({"PNEUMO__INFERENCE__ORT_LIBRARY": "/nonexistent/libonnxruntime.so"}, "does not exist"),
                        ({"PNEUMO__DICOM__AE_TITLE": "A\\B"}, "dicom.ae_title")):
        r = serve(**env)
        assert r.returncode == MISCONFIGURED and needle in r.stderr, (env, r.returncode, r.stderr)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        r = serve(PNEUMO__DICOM__PORT=str(taken.getsockname()[1]))
        # With JSON logs, the error that ends the start is a JSON line too:
        # it was plain text, which a log pipeline of JSON lines dropped.
        in_json = serve(PNEUMO__DICOM__PORT=str(taken.getsockname()[1]), PNEUMO__LOG__FORMAT="json")
    finally:
        taken.close()
    assert r.returncode == 1 and "Address already in use" in r.stderr, r.stderr
    import json

    last = json.loads(in_json.stderr.strip().splitlines()[-1])
    assert last["level"] == "ERROR" and "Address already in use" in last["fields"]["error"], last
    # A data disk not yet mounted: its mount point's folder is missing. The
    # data directory was made with its parents, and the node served a fresh
    # store on the root file system. It exits 1 now (restarted: it mounts).
    unmounted = tmp_path / "not-mounted" / "pneumo"
    r = serve(PNEUMO__NODE__DATA_DIR=str(unmounted))
    assert r.returncode == 1 and "a disk not yet mounted?" in r.stderr, r.stderr
    assert not unmounted.parent.exists()
    unit = (ROOT / "deploy" / "pneumo-node.service").read_text()
    assert f"RestartPreventExitStatus={MISCONFIGURED}" in unit
    assert "RequiresMountsFor=" in unit


def test_a_port_the_account_may_not_listen_on_exits_78(tmp_path):
    """Port 104 under an account without CAP_NET_BIND_SERVICE failed with
    exit 1, and the unit restarted it for good."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        import pytest
        pytest.skip("needs root and setpriv to run as another account")
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="pneumo-nobody-", dir="/tmp"))  # pytest's folders are root's alone
    home.chmod(0o777)
    env = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(home / "var"), "PNEUMO__DICOM__PORT": "104",
           "PNEUMO__HTTP__PORT": str(free_port())}
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(node_binary()), "serve"], env=env, capture_output=True, text=True, cwd=home, timeout=60)
    assert r.returncode == MISCONFIGURED and "104: Permission denied" in r.stderr, (r.returncode, r.stderr)
    # check-config, run as the service's account, said "configuration OK"
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(node_binary()), "check-config"], env=env, capture_output=True, text=True, cwd=home,
                       timeout=60)
    assert r.returncode == MISCONFIGURED and "dicom.bind/dicom.port 127.0.0.1:104: this account may not listen" \
        in r.stderr, (r.returncode, r.stderr)
    # A data directory the account may not write (a first run as root made
    # it) was exit 1, restarted every 5 s for good, reloading the model.
    owned_by_root = home / "by-root"
    owned_by_root.mkdir(mode=0o755)
    env = {**env, "PNEUMO__NODE__DATA_DIR": str(owned_by_root / "var"), "PNEUMO__DICOM__PORT": str(free_port())}
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(node_binary()), "serve"], env=env, capture_output=True, text=True, cwd=home, timeout=60)
    assert r.returncode == MISCONFIGURED and "cannot prepare data directory" in r.stderr, (r.returncode, r.stderr)
    assert "Permission denied" in r.stderr, r.stderr
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(node_binary()), "check-config"], env=env, capture_output=True, text=True, cwd=home,
                       timeout=60)
    assert r.returncode == MISCONFIGURED and "node.data_dir" in r.stderr and "cannot be made in" in r.stderr, \
        (r.returncode, r.stderr)
    # Only the top folder chowned after a first run as root: check-config
    # passed, the start failed on the lock or refused every instance.
    partial = home / "partial"
    (partial / "instances").mkdir(parents=True, mode=0o755)
    shutil.chown(partial, "nobody")
    env = {**env, "PNEUMO__NODE__DATA_DIR": str(partial), "PNEUMO__DICOM__PORT": str(free_port())}
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(node_binary()), "check-config"], env=env, capture_output=True, text=True, cwd=home,
                       timeout=60)
    assert r.returncode == MISCONFIGURED and f"{partial / 'instances'}: this account" in r.stderr, \
        (r.returncode, r.stderr)
    # A database restored as root into the account's data directory: exit 1
    # before, restarted for good.
    restored = home / "restored"
    restored.mkdir()
    import sqlite3
    sqlite3.connect(restored / "pneumo-node.sqlite").execute("CREATE TABLE restored (x)").connection.commit()
    os.chmod(restored / "pneumo-node.sqlite", 0o644)
    shutil.chown(restored, "nobody")
    env = {**env, "PNEUMO__NODE__DATA_DIR": str(restored), "PNEUMO__DICOM__PORT": str(free_port())}
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(node_binary()), "serve"], env=env, capture_output=True, text=True, cwd=home, timeout=60)
    shutil.rmtree(home, ignore_errors=True)
    assert r.returncode == MISCONFIGURED and "readonly database" in r.stderr, (r.returncode, r.stderr)


def test_a_spool_that_is_a_symbolic_link_is_refused_and_its_target_left_alone(tmp_path):
    """The spool's files are removed at start (transfers a stop cut): a
    spool linked to another directory had that directory emptied."""
    data_dir, elsewhere = tmp_path / "var", tmp_path / "elsewhere"
    data_dir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not the node's")
    (data_dir / "spool").symlink_to(elsewhere)
    env = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(data_dir),
           "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port())}
    # check-config said "configuration OK"
    for command in (["serve"], ["check-config"]):
        r = subprocess.run([str(node_binary()), *command], env=env, capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == MISCONFIGURED and "spool is a symbolic link" in r.stderr, (command, r.stderr)
        assert "configuration OK" not in r.stdout
    assert (elsewhere / "precious.txt").exists()


def test_check_config_finds_an_address_and_a_database_folder_a_start_would_fail_on(tmp_path):
    """An address this host does not have, and a database.url in a folder
    that does not exist: check-config said "configuration OK", serve
    exited 1 (restarted every 5 s)."""
    base = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(tmp_path / "var"),
            "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port())}
    for extra, said in [
        ({"PNEUMO__DICOM__BIND": "192.0.2.1"}, "dicom.bind/dicom.port 192.0.2.1:"),
        ({"PNEUMO__HTTP__BIND": "192.0.2.1"}, "http.bind/http.port 192.0.2.1:"),
        ({"PNEUMO__DATABASE__URL": f"sqlite:{tmp_path}/nowhere/x.sqlite"},
         f"database.url: the database's folder {tmp_path}/nowhere: does not exist"),
    ]:
        r = subprocess.run([str(node_binary()), "check-config"], env={**base, **extra}, capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert r.returncode == MISCONFIGURED and said in r.stderr, (extra, r.returncode, r.stderr)
        assert "configuration OK" not in r.stdout
    # serve named the lock file a "data directory" it could not prepare
    r = subprocess.run([str(node_binary()), "serve"],
                       env={**base, "PNEUMO__DATABASE__URL": f"sqlite:{tmp_path}/nowhere/x.sqlite"},
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode != 0 and "cannot make the database's lock file" in r.stderr \
        and "database.url" in r.stderr, r.stderr
    # the node's own ports, taken by the node running: not a problem
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", int(base["PNEUMO__DICOM__PORT"])))
        held.listen()
        r = subprocess.run([str(node_binary()), "check-config"], env=base, capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr


def test_check_config_warns_of_values_the_node_would_change_or_never_match(tmp_path):
    """A station name cut to 16 characters in every report, a backslash
    written as a space, `PA;AP` from the environment taken as one View
    Position matching nothing (every PA image skipped without a word): all
    printed as "configuration OK"."""
    env = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(tmp_path / "var"),
           "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port()),
           "PNEUMO__REPORT__STATION_NAME": "RADIOLOGY-NORTH-WING-3",
           "PNEUMO__REPORT__INSTITUTION_NAME": "North\\South Hospital",
           "PNEUMO__ROUTING__ANALYSE_VIEW_POSITIONS": "PA;AP",
           "PNEUMO__ROUTING__ANALYSE_BODY_PARTS": "CHEST/THORAX"}
    r = subprocess.run([str(node_binary()), "check-config"], env=env, capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr
    assert 'warning: report.station_name "RADIOLOGY-NORTH-WING-3": longer than the 16 characters' in r.stderr
    assert "report.institution_name" in r.stderr and "written as a space" in r.stderr, r.stderr
    assert 'routing.analyse_view_positions term "PA;AP" holds a separator' in r.stderr, r.stderr
    assert 'routing.analyse_body_parts term "CHEST/THORAX" holds a separator' in r.stderr, r.stderr
    # A destination host this machine cannot resolve (a typo): every
    # delivery there failed, and check-config said nothing.
    config = tmp_path / "node.toml"
    config.write_text('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "pacs.invalid"\nport = 104\n'
                      '[[destinations]]\nname = "ws"\nae_title = "WS"\nhost = "127.0.0.1"\nport = 104\n')
    r = subprocess.run([str(node_binary()), "--config", str(config), "check-config"], env=env,
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "configuration OK" in r.stdout, r.stderr
    assert "warning: destination `pacs`: host `pacs.invalid` does not resolve here" in r.stderr, r.stderr
    assert "destination `ws`" not in r.stderr, r.stderr


def test_instances_on_another_file_system_than_the_spool_is_refused_and_not_ready(node_factory, tmp_path):
    """instances/ linked to (or mounted from) a larger disk: every C-STORE
    was refused (A700 "Invalid cross-device link", received files are
    renamed into place) while check-config said OK and /readyz ready."""
    import shutil

    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        import pytest
        pytest.skip("needs /dev/shm on a file system of its own")
    import tempfile

    elsewhere = Path(tempfile.mkdtemp(prefix="pneumo-instances-", dir="/dev/shm"))
    try:
        data_dir = tmp_path / "var"
        data_dir.mkdir()
        (data_dir / "instances").symlink_to(elsewhere)
        env = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(data_dir),
               "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port())}
        for command in ("check-config", "serve"):
            r = subprocess.run([str(node_binary()), command], env=env, capture_output=True, text=True,
                               cwd=ROOT, timeout=120)
            assert r.returncode == MISCONFIGURED and "is on another file system than" in r.stderr, \
                (command, r.returncode, r.stderr)
        assert list(elsewhere.iterdir()) == []
        # Linked there while the node runs: not ready, saying why.
        node = node_factory().start()
        assert node.http("/readyz")[0] == 200
        instances = node.data_dir / "instances"
        instances.mkdir(exist_ok=True)
        instances.rename(node.data_dir / "instances.here")
        instances.symlink_to(elsewhere)
        code, body = node.http("/readyz")
        assert code == 503 and any("is on another file system than" in r for r in body["reasons"]), body
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_serve_as_root_on_the_service_accounts_data_directory_is_refused(tmp_path):
    """A `serve` run as root on the data directory of the service's account
    left study folders root's; the service then refused every new instance
    of those studies (A700 "Permission denied") while /readyz said ready."""
    import shutil

    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root")
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    shutil.chown(data_dir, "nobody")
    env = {**os.environ, "PNEUMO__NODE__DATA_DIR": str(data_dir),
           "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port())}
    r = subprocess.run([str(node_binary()), "serve"], env=env, capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == MISCONFIGURED, (r.returncode, r.stderr)
    assert f"serve runs as root on data directory {data_dir}, owned by user ID" in r.stderr, r.stderr
    assert list(data_dir.iterdir()) == [], "nothing made in it as root"
    # check-config as root (an administrator checking the service's
    # configuration) says so without refusing
    r = subprocess.run([str(node_binary()), "check-config"], env=env, capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0 and "`serve` refuses to run as root there" in r.stderr, (r.returncode, r.stderr)
