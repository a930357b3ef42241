"""Kafka's jars: resolved from Maven Central with Maven (``deploy/kafka/pom.xml``) once, cached,
and run by a Java 17+ found on the machine."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from tuneline.devtools.kafka.errors import KafkaPrerequisiteError, KafkaProvisionError

#: Used when the pom cannot be read; the pom's ``kafka.version`` property is the source of truth.
DEFAULT_KAFKA_VERSION = "4.1.1"
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
DEFAULT_HEAP = "-Xmx512m -Xms256m"
CACHE_ENV = "TUNELINE_KAFKA_CACHE"
POM_ENV = "TUNELINE_KAFKA_POM"
_POM_MARKER = ".pom.sha256"
MIN_JAVA_MAJOR = 17
_POM_NS = "{http://maven.apache.org/POM/4.0.0}"


def default_pom() -> Path:
    """``deploy/kafka/pom.xml`` of this checkout, or ``$TUNELINE_KAFKA_POM``."""
    env = os.environ.get(POM_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "deploy" / "kafka" / "pom.xml"


def kafka_version(pom: Path | None = None) -> str:
    """The Kafka version the pom pins (``<kafka.version>``)."""
    pom = pom or default_pom()
    try:
        root = ET.parse(pom).getroot()  # noqa: S314 - our own checked-in pom
    except (OSError, ET.ParseError):
        return DEFAULT_KAFKA_VERSION
    node = root.find(f"{_POM_NS}properties/{_POM_NS}kafka.version")
    if node is None:
        node = root.find("properties/kafka.version")
    return (node.text or "").strip() if node is not None and node.text else DEFAULT_KAFKA_VERSION


def default_cache_dir(version: str | None = None) -> Path:
    """``$TUNELINE_KAFKA_CACHE`` (the jar directory itself), else
    ``${XDG_CACHE_HOME:-~/.cache}/tuneline/kafka/<version>/libs``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tuneline" / "kafka" / (version or kafka_version()) / "libs"


class KafkaJars:
    """The jar cache of one Kafka install (``cache_dir``, resolved from ``pom``) and the Java
    and Maven that run and fill it; :class:`~tuneline.devtools.kafka.broker.LocalKafka` is one."""

    pom: Path
    cache_dir: Path | None

    @property
    def libs_dir(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir

    # ----------------------------------------------------------------------------- tools

    @staticmethod
    def java_executable() -> str:
        """``$JAVA_HOME/bin/java`` or ``java`` on PATH; raises if neither is there."""
        java_home = os.environ.get("JAVA_HOME")
        if java_home:
            candidate = Path(java_home) / "bin" / "java"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = shutil.which("java")
        if not found:
            raise KafkaPrerequisiteError(
                f"Java {MIN_JAVA_MAJOR}+ is required to run the local Kafka broker but no `java` "
                "was found on PATH (or in $JAVA_HOME). Install a JDK/JRE 17 or newer, e.g. "
                "`apt-get install openjdk-17-jre-headless` or `brew install openjdk@17`."
            )
        return found

    @staticmethod
    def maven_executable() -> str:
        found = shutil.which("mvn")
        if not found:
            raise KafkaPrerequisiteError(
                "Maven is required once, to download Apache Kafka's jars from Maven Central, but "
                "no `mvn` was found on PATH. Install Apache Maven 3.6+, e.g. `apt-get install "
                "maven` or `brew install maven`, or point $TUNELINE_KAFKA_CACHE at a directory "
                "that already holds the jars."
            )
        return found

    def check_java_version(self, java: str | None = None) -> None:
        """Raise :class:`KafkaPrerequisiteError` when ``java`` (default: the one found) is
        older than Kafka 4 needs; an unreadable version is let through."""
        java = java or self.java_executable()
        try:
            out = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if not match:
            return
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_x" style
            major = int(match.group(2))
        if major < MIN_JAVA_MAJOR:
            raise KafkaPrerequisiteError(
                f"Kafka 4 needs Java {MIN_JAVA_MAJOR}+, but `{java}` is Java {major}. Install a "
                "JDK/JRE 17 or newer and put it first on PATH (or set JAVA_HOME)."
            )

    # ----------------------------------------------------------------------------- provision

    def _pom_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.pom.read_bytes()).hexdigest()
        except OSError:
            return None

    def is_provisioned(self) -> bool:
        """Whether the cache holds Kafka's jars, resolved from the current pom.

        Maven writes ``.pom.sha256`` next to the jars; when the pom has changed since (a new
        dependency, say), the cache is stale. A jar directory without that marker (one a user
        pointed ``$TUNELINE_KAFKA_CACHE`` at) is taken as it is.
        """
        libs = self.libs_dir
        if not (libs.is_dir() and any(libs.glob("kafka_2.13-*.jar"))):
            return False
        marker = libs / _POM_MARKER
        if not marker.is_file():
            return True
        digest = self._pom_digest()
        return digest is None or marker.read_text().strip() == digest

    def provision(self) -> Path:
        """Resolve Kafka's jars into the cache with Maven unless they are already there."""
        self.java_executable()  # Maven and the broker both need it: say so first
        if self.is_provisioned():
            return self.libs_dir
        mvn = self.maven_executable()
        digest = self._pom_digest()
        if digest is None:
            raise KafkaProvisionError(
                f"Kafka's pom was not found at {self.pom}; run from a Tuneline checkout or set "
                f"${POM_ENV}."
            )
        libs = self.libs_dir
        libs.parent.mkdir(parents=True, exist_ok=True)
        staging = libs.parent / f".{libs.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(self.pom),
            "dependency:copy-dependencies",
            f"-Dkafka.libs.dir={staging}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise KafkaProvisionError(
                f"`{shlex.join(cmd)}` failed (exit {proc.returncode}); Maven Central must be "
                f"reachable the first time.\n{tail}"
            )
        (staging / _POM_MARKER).write_text(digest + "\n")
        stale = libs.parent / f".{libs.name}.stale-{os.getpid()}"
        if libs.exists():  # resolved from an older pom: move it aside, then swap in the new set
            with contextlib.suppress(OSError):
                libs.rename(stale)
        try:
            staging.rename(libs)  # atomic: a concurrent provisioner never sees half a cache
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.is_provisioned():
                raise
        shutil.rmtree(stale, ignore_errors=True)
        return libs
