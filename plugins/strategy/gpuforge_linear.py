# -*- coding: utf-8 -*-
"""`gpuforge_linear`: Ansible's linear strategy, with three changes for the controller's CPU. README
(Performance) has the measurements, docs/decisions.md (ansible.cfg) the choices.

1. Each forked worker runs at a lower CPU priority than the strategy's own loop.
   The linear strategy's main loop is serial. For every task it computes each host's variables, forks a
   worker per host and then processes each host's result, and the next task cannot start before it has.
   While it does, the workers it already forked (templating, SSH) compete with it for the same cores. When
   there are more runnable workers than cores, the loop gets a fair share of a core at best, and each task
   ends later than its workers' CPU time needs. A lower priority for the workers (`nice`) keeps their
   throughput, because the cores stay busy, and lets the loop go first, so the hosts' tasks start sooner.
   GPUFORGE_WORKER_NICE (default 10; 0 leaves the workers as linear does) is added to the main loop's own
   niceness, up to 19, so no privilege is needed. SSH clients a worker starts (and the ControlPersist master
   the first one leaves) inherit it; the hosts' own processes are not touched.

2. Jinja's compiled code for every template and expression is kept on disk and reused.
   ansible-core 2.19 compiles a template each time it evaluates one (Jinja parses it, generates Python and
   compiles that), and every worker is a fresh fork of the main loop, so nothing one worker compiled serves
   the next: the same `when:` on 12 hosts is compiled 12 times, and again on every run. Here each compiled
   code object is written once (marshal, as Jinja's own bytecode cache does) to a file named by a hash of
   the source and of everything else the code depends on: the ansible-core, Jinja and Python versions and
   the environment's syntax settings (`#jinja2:` overrides, backslash escaping). A later worker or run loads
   it instead of compiling. GPUFORGE_TEMPLATE_CACHE is the directory (default .cache/templates in the
   project; empty: off). The files are code this process runs, so only a directory that the user alone can
   write is used; a missing, torn or foreign file is compiled again; template debugging
   (`_debuggable_template_source`) bypasses the cache. Only the compilation is cached: every evaluation
   still runs with that evaluation's variables. Jinja also writes into the code whether each filter and
   test it calls gets the context (or eval context, or environment) first; each file records those with
   that, and a load compiles again when a plugin changed.

3. The filter and test plugins are loaded in the main loop before it forks, so that every worker inherits
   them instead of finding and loading them again.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sys
import threading
from pathlib import Path
from types import CodeType

import jinja2
from ansible.module_utils.ansible_release import __version__ as ansible_version
from ansible.plugins.loader import filter_loader, test_loader
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategyModule
from ansible.utils.display import Display
from jinja2 import nodes
from jinja2.utils import _PassArg, internalcode

try:  # ansible-core's templating internals (2.19): without them, templates compile as Ansible ships
    from ansible._internal._templating import _jinja_bits

    _jinja_bits.AnsibleEnvironment._debuggable_template_source  # noqa: B018 (the attributes the cache reads)
    _jinja_bits._TemplateCompileContext.current  # noqa: B018
    _jinja_bits._TEMPLATE_OVERRIDE_FIELD_NAMES  # noqa: B018
except (ImportError, AttributeError):
    _jinja_bits = None

DOCUMENTATION = """
    name: gpuforge_linear
    short_description: linear, with the workers at a lower CPU priority and compiled templates kept
    description:
        - Ansible's linear strategy. Each worker it forks runs GPUFORGE_WORKER_NICE (default 10) above the
          main loop's niceness, up to 19.
        - Jinja's compiled code for each template and expression is kept in GPUFORGE_TEMPLATE_CACHE
          (default .cache/templates in the project; empty turns it off) and reused by later workers and runs.
    author: gpuforge
"""

display = Display()


def worker_nice() -> int:
    """The niceness to give the workers, from GPUFORGE_WORKER_NICE: a whole number from 0 to 19."""
    raw = os.environ.get("GPUFORGE_WORKER_NICE", "10")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"GPUFORGE_WORKER_NICE must be a whole number from 0 to 19, not {raw!r}") from None
    if not 0 <= value <= 19:
        raise ValueError(f"GPUFORGE_WORKER_NICE must be a whole number from 0 to 19, not {value}")
    return value


class StrategyModule(LinearStrategyModule):
    def __init__(self, tqm):
        # Checked before linear's own start, which starts the results thread: a bad value stops the run there.
        step = worker_nice()
        super().__init__(tqm)
        # Relative to the loop's own niceness: raising a process's niceness needs no privilege, lowering does.
        self._gpuforge_nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + step) if step else None
        # In the main loop, before it forks a worker for this play: every worker inherits the cache.
        if _jinja_bits is not None:
            install_template_cache(open_template_cache())
        # Ansible's and the project's filters and tests, loaded here once rather than in every worker that
        # templates (each found them again: 1,350 look-ups in a 5-host no-op's 600 workers).
        for loader in (filter_loader, test_loader):
            list(loader.all())

    def _queue_task(self, host, task, task_vars, play_context):
        super()._queue_task(host, task, task_vars, play_context)
        if self._gpuforge_nice is None:
            return
        # The worker just started is the one not yet marked (each worker is a new object in its slot).
        for worker in self._workers:
            if worker is None or getattr(worker, "_gpuforge_niced", False):
                continue
            try:
                pid = worker.pid
            except ValueError:  # a closed worker object
                continue
            if pid:
                worker._gpuforge_niced = True
                with contextlib.suppress(ProcessLookupError):  # already exited: nothing left to slow down
                    os.setpriority(os.PRIO_PROCESS, pid, self._gpuforge_nice)


# --- Compiled templates, kept for the next worker and the next run ------------------------------------------

CACHE_FORMAT = 2
# More files than this (old sources pile up as the playbooks change): the directory is emptied and refilled.
CACHE_MAX_FILES = 20000


def template_cache_dir() -> Path | None:
    """GPUFORGE_TEMPLATE_CACHE, default .cache/templates in the project; an empty value turns the cache off."""
    raw = os.environ.get("GPUFORGE_TEMPLATE_CACHE")
    if raw is None:
        return Path(__file__).resolve().parents[2] / ".cache" / "templates"
    return Path(raw) if raw else None


class TemplateCodeCache:
    """Jinja's compiled code for each template and expression source, one file each, named by a hash of the
    source and of everything else the code depends on (versions, the environment's syntax settings)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.salt = repr((CACHE_FORMAT, ansible_version, jinja2.__version__, sys.version_info[:3])).encode()

    def path(self, key: tuple) -> Path:
        digest = hashlib.blake2b(self.salt, digest_size=20)
        for part in key:
            digest.update(b"\0")
            digest.update(part.encode("utf-8", "surrogatepass") if isinstance(part, str) else repr(part).encode())
        return self.directory / digest.hexdigest()

    def load(self, key: tuple, env) -> CodeType | None:
        """The code compiled for `key`, if every filter and test it calls is still what it was then."""
        try:
            fmt, plugins, code = marshal.loads(self.path(key).read_bytes())
        except (OSError, EOFError, ValueError, TypeError):  # not there yet, or a torn or foreign file
            return None
        if fmt != CACHE_FORMAT or not isinstance(code, CodeType):
            return None
        if any(plugin_signature(env, kind, name) != signature for kind, name, signature in plugins):
            return None  # a filter or test that changed how it is called (or went): compile again
        return code

    def store(self, key: tuple, env, tree: nodes.Template, code: CodeType) -> None:
        target = self.path(key)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(marshal.dumps((CACHE_FORMAT, plugins_called(env, tree), code)))
            os.replace(tmp, target)  # whole or not at all, for workers reading at the same time
        except (OSError, ValueError):  # ValueError: a constant marshal cannot write; it compiles each time
            with contextlib.suppress(OSError):
                tmp.unlink()

    def prepare(self) -> str | None:
        """Create the directory (private), empty it when it has grown too large. Returns why the cache cannot
        be used, or None. Its files are code this process runs: only a directory that the user alone can
        write is trusted."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.directory.stat()
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return f"{self.directory} is not the user's own, or others can write to it"
            names = os.listdir(self.directory)
            if len(names) > CACHE_MAX_FILES:
                for name in names:
                    with contextlib.suppress(OSError):
                        (self.directory / name).unlink()
        except OSError as exc:
            return str(exc)
        return None


def plugin_signature(env, kind: str, name: str) -> str | None:
    """What compiled code assumes of a filter or test: that it exists, and which argument Jinja passes it
    first (context, eval_context, environment: `@pass_context` and the like), which the code generator
    writes into the call. None: no such plugin."""
    try:
        func = (env.filters if kind == "filter" else env.tests).get(name)
    except Exception:  # a plugin that fails to load: never equal to what a compiled template recorded
        return "(load error)"
    if func is None:
        return None
    passed = _PassArg.from_obj(func)
    return passed.name if passed else ""


def plugins_called(env, tree: nodes.Template) -> tuple:
    """Each filter and test a parsed template calls, with its signature now (plugin_signature)."""
    called = {
        ("filter" if isinstance(node, nodes.Filter) else "test", node.name)
        for node in tree.find_all((nodes.Filter, nodes.Test))
    }
    return tuple((kind, name, plugin_signature(env, kind, name)) for kind, name in sorted(called))


_pending = threading.local()  # the cache key of the expression whose parsed tree compile() is about to compile


def _cache_key(env, kind: str, source: str) -> tuple:
    tcc = _jinja_bits._TemplateCompileContext.current(optional=True)
    syntax = tuple(getattr(env, name) for name in _jinja_bits._TEMPLATE_OVERRIDE_FIELD_NAMES)
    return (
        kind,
        source,
        bool(tcc and tcc.escape_backslashes),
        syntax,
        env.optimized,
        env.autoescape,
        env.is_async,
        sorted(env.extensions),
        type(env).__qualname__,
        env.code_generator_class.__qualname__,
    )


def open_template_cache() -> TemplateCodeCache | None:
    """The cache GPUFORGE_TEMPLATE_CACHE names, ready for use; None when it is off or cannot be used."""
    if (directory := template_cache_dir()) is None:
        return None
    cache = TemplateCodeCache(directory)
    if (why := cache.prepare()) is not None:
        display.warning(f"gpuforge_linear: every template is compiled again, without a cache: {why}")
        return None
    return cache


def install_template_cache(cache: TemplateCodeCache | None) -> None:
    """Route AnsibleEnvironment's compile and compile_expression through `cache` (None: straight through)."""
    env_class = _jinja_bits.AnsibleEnvironment
    already = "_gpuforge_cache" in env_class.__dict__
    env_class._gpuforge_cache = cache
    if already:
        return
    compile_ = jinja2.Environment.compile
    compile_expression = env_class.compile_expression

    @internalcode  # left out of the tracebacks Jinja rewrites, as its own compile is
    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        cache = type(self)._gpuforge_cache
        if cache is None or raw or self._debuggable_template_source:
            return compile_(self, source, name, filename, raw, defer_init)
        if isinstance(source, str):
            key = _cache_key(self, "template", source) + (name, filename, defer_init)
            if (code := cache.load(key, self)) is not None:
                return code
        else:  # compile_expression's parsed tree: keyed by the expression's text, already looked up
            key, _pending.key = getattr(_pending, "key", None), None
            if key is None:
                return compile_(self, source, name, filename, raw, defer_init)
        code = compile_(self, source, name, filename, raw, defer_init)  # errors raised as Jinja raises them
        # Parsed again (once per source and cache) for the filters and tests the code calls.
        tree = self._parse(source, name, filename) if isinstance(source, str) else source
        cache.store(key, self, tree, code)
        return code

    @internalcode
    def cached_compile_expression(self, source, undefined_to_none=True):
        cache = type(self)._gpuforge_cache
        if cache is None or self._debuggable_template_source or not isinstance(source, str):
            return compile_expression(self, source, undefined_to_none)
        key = _cache_key(self, "expression", source)
        if (code := cache.load(key, self)) is not None:
            template = self.template_class.from_code(self, code, self.make_globals(None), None)
            return jinja2.environment.TemplateExpression(template, undefined_to_none)
        _pending.key = key
        try:
            return compile_expression(self, source, undefined_to_none)
        finally:
            _pending.key = None

    env_class.compile = compile
    env_class.compile_expression = cached_compile_expression
