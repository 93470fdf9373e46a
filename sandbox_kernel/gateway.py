"""Start a sandboxed kernel for Jupyter Enterprise Gateway's remote process proxies.

Enterprise Gateway (EG) starts a remote kernel (a Kubernetes pod, a Docker container,
a host reached over ssh) by running a *kernel launcher* there, which must:

1. pick five kernel ports (inside ``--port-range``), write a connection file with a
   fresh key, and start the kernel on it;
2. send the connection information, with a ``comm_port`` and the launcher's pid/pgid,
   to EG's ``--response-address``: AES-encrypted with a random key that is itself
   encrypted with EG's ``--public-key`` (RSA, PKCS#1 v1.5), the "version 1" payload of
   EG's own ``launch_ipykernel.py``;
3. listen on ``comm_port`` for EG's requests: ``{"signum": N}`` (0 is EG's liveness
   poll, 2 an interrupt, 9 a kill) and ``{"shutdown": 1}``.

EG's own Python launcher runs the kernel *inside its own process*, so nothing could be
confined before the kernel's interpreter starts. This launcher does the same three
steps but starts the kernel through the kernelspec that ``sandbox-kernel install``
wrote in the kernel image (its ``argv``: the sandbox launcher, then the kernel), so
every layer of the profile applies before any tenant code runs, exactly as under a
local Jupyter server. It stays outside the sandbox as the kernel's parent (the process
EG's pid/pgid and comm port refer to), forwards signals and exits with the kernel.

Run it as the kernel image's command (``python -I -m sandbox_kernel.gateway``); the
values come from the arguments or from the environment EG's pod template sets
(``KERNEL_ID``, ``RESPONSE_ADDRESS``/``EG_RESPONSE_ADDRESS``,
``PUBLIC_KEY``/``EG_PUBLIC_KEY``, ``PORT_RANGE``/``EG_PORT_RANGE``). Which kernelspec
it starts is ``--kernelspec`` or ``SANDBOX_KERNEL_KERNELSPEC`` (a name looked up in the
image's system Jupyter directories only, or a directory): not a ``KERNEL_*`` variable,
so an EG client cannot choose it. The tenant's ceiling (``SANDBOX_KERNEL_CEILING``)
reaches the kernel through this process's environment.

Every module this process needs (including pycryptodomex, the library EG itself uses
for this protocol, from the image's site-packages) is imported before the kernel
starts: nothing the sandboxed kernel could write is ever imported here.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid

from .errors import SandboxError

SPEC_ENV = "SANDBOX_KERNEL_KERNELSPEC"
# Where `sandbox-kernel install --sys-prefix` (or a system-wide install) puts kernelspecs.
# A kernelspec *name* is looked up only here: never in a user's or JUPYTER_PATH directory.
SYSTEM_KERNEL_DIRS = [os.path.join(sys.prefix, "share", "jupyter", "kernels"),
                      "/usr/local/share/jupyter/kernels", "/usr/share/jupyter/kernels"]
PORT_KEYS = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")
# What EG sends over the comm port: 0 (liveness poll), interrupts, terminations.
ALLOWED_SIGNALS = {0, signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MAX_REQUEST = 4096
LOOPBACK = ("127.", "::1", "localhost")


def _env(*names: str, default: str | None = None) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sandbox_kernel.gateway",
        description="Kernel launcher for Jupyter Enterprise Gateway's remote process proxies "
                    "(Kubernetes, Docker, distributed): starts the sandboxed kernel of an installed "
                    "sandbox-kernel kernelspec and reports its connection to Enterprise Gateway.")
    p.add_argument("--kernelspec", default=_env(SPEC_ENV),
                   help=f"installed sandbox-kernel kernelspec: a name (looked up in {', '.join(SYSTEM_KERNEL_DIRS)}) "
                        f"or a directory [${SPEC_ENV}]")
    p.add_argument("--kernel-id", default=_env("KERNEL_ID"), help="the kernel's id (a UUID) [$KERNEL_ID]")
    p.add_argument("--response-address", default=_env("RESPONSE_ADDRESS", "EG_RESPONSE_ADDRESS"),
                   metavar="IP:PORT", help="where Enterprise Gateway waits for the connection information "
                                           "[$RESPONSE_ADDRESS, $EG_RESPONSE_ADDRESS]")
    p.add_argument("--public-key", default=_env("PUBLIC_KEY", "EG_PUBLIC_KEY"),
                   help="Enterprise Gateway's public key (base64 DER) [$PUBLIC_KEY, $EG_PUBLIC_KEY]")
    p.add_argument("--port-range", default=_env("PORT_RANGE", "EG_PORT_RANGE", default="0..0"),
                   metavar="LOW..HIGH", help="ports the kernel and comm port may use; 0..0: any [$PORT_RANGE]")
    p.add_argument("--ip", default=_env("SANDBOX_KERNEL_GATEWAY_IP", default="0.0.0.0"),
                   help="address the kernel binds (default 0.0.0.0: a pod is reached on its pod IP) "
                        "[$SANDBOX_KERNEL_GATEWAY_IP]")
    return p


# --------------------------------------------------------------------------- inputs


def find_kernelspec(spec: str | None) -> tuple[str, dict]:
    """(directory, kernel.json) of an installed sandbox-kernel kernelspec."""
    if not spec:
        raise SandboxError(f"no kernelspec given: pass --kernelspec NAME or set {SPEC_ENV} "
                           "(e.g. sandbox-free, installed in the image with `sandbox-kernel install --sys-prefix`)")
    if os.sep in spec:
        candidates = [spec]
    else:
        candidates = [os.path.join(d, spec) for d in SYSTEM_KERNEL_DIRS]
    for d in candidates:
        path = os.path.join(d, "kernel.json")
        if os.path.isfile(path):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as e:
                raise SandboxError(f"{path}: cannot read the kernelspec ({e}); reinstall it with "
                                   "`sandbox-kernel install`") from None
            meta = data.get("metadata") if isinstance(data, dict) else None
            if not isinstance(meta, dict) or "sandbox_kernel" not in meta or not isinstance(data.get("argv"), list):
                raise SandboxError(f"{path}: not a sandbox-kernel kernelspec (no metadata.sandbox_kernel); "
                                   "install one with `sandbox-kernel install --profile NAME --sys-prefix`")
            return os.path.abspath(d), data
    raise SandboxError(f"kernelspec {spec!r} not found in {', '.join(candidates)}; install it in the kernel "
                       "image with `sandbox-kernel install --profile NAME --sys-prefix`")


def parse_port_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(".."))
    except ValueError:
        raise SandboxError(f"--port-range {text!r}: expected LOW..HIGH, e.g. 40000..41000 (0..0: any port)") from None
    if (low, high) != (0, 0) and not (1024 <= low < high <= 65535):
        raise SandboxError(f"--port-range {text!r}: expected 1024 <= LOW < HIGH <= 65535 (or 0..0)")
    return low, high


def parse_response_address(text: str | None) -> tuple[str, int]:
    if not text:
        raise SandboxError("--response-address is missing: Enterprise Gateway passes {response_address} "
                           "(or $RESPONSE_ADDRESS)")
    host, _, port = (text or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SandboxError(f"--response-address {text!r}: expected IP:PORT (Enterprise Gateway passes "
                           "{response_address})")
    return host.strip("[]"), int(port)


def load_public_key(text: str | None):
    if not text:
        raise SandboxError("--public-key is missing: Enterprise Gateway passes {public_key} (or $PUBLIC_KEY)")
    try:
        from Cryptodome.PublicKey import RSA
    except ImportError:
        raise SandboxError("pycryptodomex is not installed in the kernel image (EG's connection report is "
                           "encrypted with it): pip install 'sandbox-kernel[gateway]'") from None

    try:
        return RSA.import_key(base64.b64decode((text or "").encode(), validate=True))
    except (ValueError, IndexError, TypeError):
        raise SandboxError("--public-key: not Enterprise Gateway's public key (base64 DER; EG passes "
                           "{public_key})") from None


def check_kernel_id(kernel_id: str | None) -> str:
    if not kernel_id:
        raise SandboxError("--kernel-id is missing: Enterprise Gateway passes {kernel_id} (or $KERNEL_ID)")
    try:
        return str(uuid.UUID(kernel_id))
    except ValueError:
        raise SandboxError(f"--kernel-id {kernel_id!r}: expected the kernel's UUID (EG passes {{kernel_id}})") from None


# --------------------------------------------------------------------------- ports and payload


def bind_socket(ip: str, low: int, high: int, tries: int = 20) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    last = None
    for _ in range(tries):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((ip, 0 if (low, high) == (0, 0) else random.randint(low, high)))
            return s
        except OSError as e:
            last = e
            s.close()
    raise SandboxError(f"no free port in {low}..{high} on {ip} after {tries} tries ({last})")


def select_ports(ip: str, low: int, high: int, count: int = 5) -> list[int]:
    socks = [bind_socket(ip, low, high) for _ in range(count)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def encrypt_payload(info: dict, public_key) -> bytes:
    """EG's version-1 payload: AES-ECB(conn_info) with a fresh key, the key RSA-encrypted."""
    from Cryptodome.Cipher import AES, PKCS1_v1_5
    from Cryptodome.Random import get_random_bytes
    from Cryptodome.Util.Padding import pad

    aes_key = get_random_bytes(16)
    conn_info = AES.new(aes_key, AES.MODE_ECB).encrypt(pad(json.dumps(info).encode(), 16))
    payload = {"version": 1,
               "key": base64.b64encode(PKCS1_v1_5.new(public_key).encrypt(aes_key)).decode(),
               "conn_info": base64.b64encode(conn_info).decode()}
    return base64.b64encode(json.dumps(payload).encode())


def kernel_command(spec_dir: str, spec: dict, connection_file: str, ip: str) -> list[str]:
    """The kernelspec's argv with its placeholders filled in.

    A non-loopback ``ip`` (a pod's kernel is reached on the pod IP) must be accepted by
    the launcher's connection-file check: ``--allow-kernel-ip IP`` goes before the
    ``--`` that separates the launcher's options from the kernel's command.
    """
    argv = [a.replace("{connection_file}", connection_file).replace("{resource_dir}", spec_dir)
            for a in spec["argv"]]
    if not ip.startswith(LOOPBACK) and "--" in argv:
        at = argv.index("--")
        argv[at:at] = ["--allow-kernel-ip", ip]
    return argv


# --------------------------------------------------------------------------- the running kernel


class Launch:
    def __init__(self, args):
        self.spec_dir, self.spec = find_kernelspec(args.kernelspec)
        self.kernel_id = check_kernel_id(args.kernel_id)
        self.response = parse_response_address(args.response_address)
        self.public_key = load_public_key(args.public_key)
        self.low, self.high = parse_port_range(args.port_range)
        self.ip = args.ip
        encrypt_payload({}, self.public_key)  # imports every crypto module now, before the kernel runs
        self.env = dict(os.environ)
        self.env.update({k: str(v) for k, v in (self.spec.get("env") or {}).items()})
        self.workdir = None
        self.connection_file = self._connection_path()
        self.child = None
        self.comm = None

    def _connection_path(self) -> str:
        """In Jupyter's runtime directory of the kernel's account (as a Jupyter server keeps
        them), which the sandbox keeps private even where the pod gives it no mount namespace;
        where there is none to be had (no writable home), a private directory under /tmp, which
        the launcher accepts only with a mount namespace (a shared /tmp is not private)."""
        from .layers.jupyter_paths import jupyter_runtime_dir

        name = f"kernel-{self.kernel_id}.json"
        runtime = jupyter_runtime_dir(self.env)
        try:
            os.makedirs(runtime, mode=0o700, exist_ok=True)
            if os.access(runtime, os.W_OK):
                return os.path.join(runtime, name)
        except OSError:
            pass
        self.workdir = tempfile.mkdtemp(prefix="sandbox-kernel-eg-")
        return os.path.join(self.workdir, name)

    def write_connection_file(self) -> dict:
        ports = select_ports(self.ip, self.low, self.high)
        info = dict(zip(PORT_KEYS, ports))
        info.update(ip=self.ip, key=str(uuid.uuid4()), transport="tcp", signature_scheme="hmac-sha256",
                    kernel_name=os.path.basename(self.spec_dir))
        fd = os.open(self.connection_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        return info

    def start_kernel(self) -> None:
        import subprocess

        env = dict(self.env)
        env["JPY_PARENT_PID"] = str(os.getpid())  # the sandbox's supervisor watches this process
        # its own process group, signalled as a whole, as jupyter_client does for local kernels
        # (the sandbox launcher's supervisor and the kernel share it)
        self.child = subprocess.Popen(kernel_command(self.spec_dir, self.spec, self.connection_file, self.ip),
                                      env=env, start_new_session=True)

    def report(self, info: dict) -> None:
        self.comm = bind_socket(self.ip, self.low, self.high)
        self.comm.listen(8)
        self.comm.settimeout(1.0)
        sent = dict(info, pid=os.getpid(), pgid=os.getpgid(0), comm_port=self.comm.getsockname()[1],
                    kernel_id=self.kernel_id)
        try:
            with socket.create_connection(self.response, timeout=30) as s:
                s.sendall(encrypt_payload(sent, self.public_key))
        except OSError as e:
            raise SandboxError(f"cannot reach Enterprise Gateway at {self.response[0]}:{self.response[1]} "
                               f"to report the kernel's connection: {e}") from None

    def signal_kernel(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signum)
            except ProcessLookupError:
                pass
            except PermissionError:  # a member of the group we may not signal: at least the launcher
                os.kill(self.child.pid, signum)

    def listen(self) -> None:
        """EG's requests on the comm port, until it asks to shut the listener down."""
        while self.child.poll() is None:
            try:
                conn, _ = self.comm.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            request = self._read_request(conn)
            if not isinstance(request, dict):
                continue
            signum = request.get("signum")
            if isinstance(signum, int) and signum in ALLOWED_SIGNALS and signum != 0:
                self.signal_kernel(signum)
            if request.get("shutdown"):
                return

    @staticmethod
    def _read_request(conn: socket.socket):
        data = b""
        conn.settimeout(5)
        try:
            with conn:
                while len(data) <= MAX_REQUEST:
                    chunk = conn.recv(1024)
                    if not chunk:
                        return json.loads(data.decode())
                    data += chunk
        except (OSError, ValueError):
            return None
        return None  # too long: not EG

    def cleanup(self) -> None:
        if self.comm is not None:
            self.comm.close()
        try:
            os.unlink(self.connection_file)
        except OSError:
            pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    launch = None
    try:
        launch = Launch(args)
        info = launch.write_connection_file()
        for s in FORWARDED:
            signal.signal(s, lambda signum, frame: launch.signal_kernel(signum))
        launch.start_kernel()
        launch.report(info)
        threading.Thread(target=launch.listen, name="eg-comm", daemon=True).start()
        code = launch.child.wait()
        return 128 - code if code < 0 else code
    except SandboxError as e:
        print(f"sandbox-kernel gateway: {e}", file=sys.stderr)
        if launch is not None and launch.child is not None:
            launch.signal_kernel(signal.SIGKILL)
            launch.child.wait()
        return 1
    finally:
        if launch is not None:
            launch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
