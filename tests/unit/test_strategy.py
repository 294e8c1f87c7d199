"""gpuforge_linear, the project's strategy (ansible.cfg): Ansible's linear strategy with its forked workers at a
lower CPU priority than the main loop, and Jinja's compiled templates kept on disk for the next worker and
run. Run by ansible-playbook on localhost: a task's command inherits its worker's niceness, which `nice` (no
arguments) prints; the cache is a directory the tests read."""

import marshal
import os
import stat
from types import CodeType

import pytest
import yaml
from conftest import ROOT, ansible_env, run_playbook


def run(tmp_path, nice, prefix=()):
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "niceness", "ansible.builtin.command": "nice", "register": "n"},
        {"name": "show", "ansible.builtin.debug": {"msg": "NICENESS={{ n.stdout }}"}},
        {"name": "linear order holds: a second task after the first", "ansible.builtin.debug": {"msg": "second"}},
    ]}]))
    env = ansible_env(tmp_path)
    if nice is not None:
        env["GPUFORGE_WORKER_NICE"] = nice
    return run_playbook(book, env=env, prefix=prefix)


def niceness(out):
    line = next(ln for ln in out.stdout.splitlines() if "NICENESS=" in ln)
    return int(line.split("NICENESS=")[1].strip().strip("'\""))


def test_the_project_runs_its_strategy():
    cfg = (ROOT / "ansible.cfg").read_text()
    assert "\nstrategy = gpuforge_linear\n" in cfg and "\nstrategy_plugins = plugins/strategy\n" in cfg


def test_workers_run_10_above_the_main_loops_niceness_by_default(tmp_path):
    out = run(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert niceness(out) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    assert "second" in out.stdout


def test_the_increment_stops_at_19_without_privilege(tmp_path):
    out = run(tmp_path, "15", prefix=["nice", "-n", "9"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert niceness(out) == 19


def test_niceness_0_leaves_the_workers_at_the_main_loops(tmp_path):
    out = run(tmp_path, "0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert niceness(out) == os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize("bad", ["ten", "-5", "20"])
def test_a_bad_niceness_stops_the_run_with_what_is_allowed(tmp_path, bad):
    out = run(tmp_path, bad)
    assert out.returncode != 0
    assert "GPUFORGE_WORKER_NICE must be a whole number from 0 to 19" in out.stdout + out.stderr


# --- Compiled templates -------------------------------------------------------------------------------------

# Templates and expressions of every kind a play evaluates: a task argument, a variable that is a template, a
# conditional, assert's expressions, a loop. Two set_fact values share their text after the `#jinja2:` header:
# the overridden delimiters must give each its own compiled code.
BODY = "[% total %] {{ total }}"
TEMPLATED = [{"hosts": "localhost", "gather_facts": False,
              "vars": {"numbers": [1, 2, 3], "total": "{{ numbers | map('int') | sum }}"},
              "tasks": [
                  {"name": "sum", "ansible.builtin.set_fact": {
                      "doubled": "{{ total | int * 2 }}",
                      "bracketed": "#jinja2:variable_start_string:'[%', variable_end_string:'%]'\n" + BODY,
                      "braced": BODY}},
                  {"name": "check", "ansible.builtin.assert": {"that": ["doubled | int == 12", "total is defined"]},
                   "when": "numbers | length > 2"},
                  {"name": "each", "ansible.builtin.debug": {"msg": "ITEM={{ item * 10 }}"}, "loop": "{{ numbers }}"},
                  {"name": "show", "ansible.builtin.debug": {
                      "msg": "RESULT={{ [doubled, bracketed, braced] | to_json }}"}},
              ]}]


def cached_run(tmp_path, cache):
    book = tmp_path / "templated.yml"
    book.write_text(yaml.safe_dump(TEMPLATED))
    out = run_playbook(book, env=ansible_env(tmp_path, GPUFORGE_TEMPLATE_CACHE=str(cache)))
    assert out.returncode == 0, out.stdout + out.stderr
    result = next(ln for ln in out.stdout.splitlines() if "RESULT=" in ln)
    items = sorted(ln.strip() for ln in out.stdout.splitlines() if "ITEM=" in ln)
    return result.split("RESULT=", 1)[1], items, out


EXPECTED = ('[12, "6 {{ total }}", "[% total %] 6"]', ['msg: ITEM=10', 'msg: ITEM=20', 'msg: ITEM=30'])


def cache_files(cache):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.iterdir()}


def test_the_cache_is_filled_and_then_read_instead_of_compiling(tmp_path):
    cache = tmp_path / "cache"
    assert cached_run(tmp_path, cache)[:2] == EXPECTED
    first = cache_files(cache)
    # Every file holds a code object, and the filters and tests it calls; the directory is the user's alone.
    entries = [marshal.loads(data) for _, data in first.values()]
    assert len(entries) >= 8 and all(isinstance(code, CodeType) for *_, code in entries)
    assert ("filter", "to_json", "") in {plugin for _, plugins, _ in entries for plugin in plugins}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    # The second run compiles nothing: a compiled template is written after each compilation, and no file
    # was written again, or added.
    assert cached_run(tmp_path, cache)[:2] == EXPECTED
    assert cache_files(cache) == first


def test_a_torn_file_is_compiled_again_and_replaced(tmp_path):
    cache = tmp_path / "cache"
    cached_run(tmp_path, cache)
    for path in cache.iterdir():
        path.write_bytes(b"torn")
    assert cached_run(tmp_path, cache)[:2] == EXPECTED
    assert all(isinstance(marshal.loads(path.read_bytes())[-1], CodeType) for path in cache.iterdir())


def test_an_empty_setting_compiles_every_template_as_ansible_does(tmp_path):
    result, items, _ = cached_run(tmp_path, "")
    assert (result, items) == EXPECTED
    assert not (tmp_path / "template-cache").exists()


def test_a_directory_others_can_write_is_not_used(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    result, items, out = cached_run(tmp_path, cache)
    assert (result, items) == EXPECTED
    assert "without a cache" in out.stdout + out.stderr and "others can write to it" in out.stdout + out.stderr
    assert list(cache.iterdir()) == []


def test_the_project_keeps_its_cache_under_dot_cache_which_git_ignores(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpuforge_linear", ROOT / "plugins/strategy/gpuforge_linear.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delenv("GPUFORGE_TEMPLATE_CACHE", raising=False)
    assert mod.template_cache_dir() == ROOT / ".cache" / "templates"
    assert ".cache/" in (ROOT / ".gitignore").read_text().splitlines()


PROBE = {
    "plain": 'def probe(value):\n    return "plain:" + value\n',
    "context": 'from jinja2 import pass_context\n\n\n@pass_context\ndef probe(context, value):\n'
               '    return "context:" + value\n',
}


def test_code_is_compiled_again_when_a_filter_changes_how_jinja_calls_it(tmp_path):
    # The compiled call passes the context first to a `@pass_context` filter and not to a plain one, so code
    # compiled for one must not serve the other, though the template's text is the same.
    filters = tmp_path / "filters"
    filters.mkdir()
    book = tmp_path / "probe.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "probe", "ansible.builtin.debug": {"msg": "PROBE={{ 'x' | probe }}"}}]}]))
    env = ansible_env(tmp_path, GPUFORGE_TEMPLATE_CACHE=str(tmp_path / "cache"),
                      ANSIBLE_FILTER_PLUGINS=str(filters), PYTHONDONTWRITEBYTECODE="1")
    seen = []
    for kind in ("plain", "context", "plain"):
        (filters / "probe.py").write_text(PROBE[kind] + '\n\nclass FilterModule:\n    def filters(self):\n'
                                          '        return {"probe": probe}\n')
        out = run_playbook(book, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        seen.append(next(ln for ln in out.stdout.splitlines() if "PROBE=" in ln).split("PROBE=")[1])
    assert seen == ["plain:x", "context:x", "plain:x"]
