"""``frozen_after`` where it would do nothing is refused when the site loads (and so is
``on_bad: predict`` on a working setpoint, which only the supervisor refused before).

The frozen rule is judged on the measurements of the model's outputs only (a working
setpoint is the PLC's own value and rightly holds still for hours). A tag file that put
``frozen_after`` on a working-setpoint tag, or on any tag that measures no model output,
loaded without a word and the key did nothing: the first test shows that silence on the
trust itself. Now the site is refused, naming the tag file, the key, the value and the tags
that may carry it; the shipped sites still load (their analysers are outputs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_trust_clock_and_stuck import trust_for

from controller.binding import Binding
from controller.errors import ConfigError
from controller.ports.base import Quality, Snapshot, TagValue
from controller.runtime.site import load_site

ROOT = Path(__file__).resolve().parents[3]
CSTR = ROOT / "configs" / "sites" / "cstr-modbus.yaml"
WORKING = "jacket_duty_pv"  # the CSTR's working setpoint of its input Q_dot


def _site_with(tmp_path: Path, tag: str, frozen_after: int, **more: object) -> Path:
    """The CSTR Modbus site with ``frozen_after`` (0: none) and ``more`` keys on ``tag`` of a
    copy of its tag file."""
    site = yaml.safe_load(CSTR.read_text())
    for key in ("plant", "controller"):
        site[key] = str((CSTR.parent / site[key]).resolve())
    site["hil"]["scenario"] = str((CSTR.parent / site["hil"]["scenario"]).resolve())
    recipe = site["forecast"]["local_recipe"]
    site["forecast"]["local_recipe"] = str((CSTR.parent / recipe).resolve())
    tags = yaml.safe_load((CSTR.parent / site["tags"]).resolve().read_text())
    if frozen_after:
        tags["tags"][tag]["frozen_after"] = frozen_after
    tags["tags"][tag].update(more)
    tag_file = tmp_path / "tags.yaml"
    tag_file.write_text(yaml.safe_dump(tags, sort_keys=False))
    site["tags"] = str(tag_file)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def test_on_a_working_setpoint_the_key_would_do_nothing() -> None:
    """The failure the refusal protects against: a working setpoint read the same twenty
    times is never frozen, whatever its tag says."""
    site = load_site(CSTR)
    binding = Binding.of(site.tags, site.model)
    assert binding.working_setpoint_tags()["Q_dot"] == WORKING
    stuck = site.tags.tags[WORKING].model_copy(update={"frozen_after": 3})
    tags = site.tags.model_copy(update={"tags": {**site.tags.tags, WORKING: stuck}})
    trust = trust_for(site, tags)
    for k in range(20):
        now = 18.0 * (k + 1)
        judged = trust.judge(Snapshot({WORKING: TagValue(-1.5, Quality.GOOD, now, now)}, now))
        assert judged.working == {"Q_dot": -1.5}  # trusted every time
        assert "Q_dot" not in judged.inputs


@pytest.mark.parametrize(
    ("tag", "what"),
    [
        (WORKING, "the tag reads input 'Q_dot' (the PLC's setpoint: it rightly holds)"),
        ("plc_heartbeat", "the tag measures none of the model's outputs"),
    ],
)
def test_the_site_is_refused_naming_the_file_the_key_and_the_value(
    tmp_path: Path, tag: str, what: str
) -> None:
    path = _site_with(tmp_path, tag, 5)
    with pytest.raises(ConfigError) as err:
        load_site(path)
    (problem,) = [p for p in err.value.problems if "frozen_after" in p.location]
    assert problem.file == str(tmp_path / "tags.yaml")
    assert (problem.location, problem.value) == (f"tags.{tag}.frozen_after", 5)
    assert problem.message.startswith(what)
    assert "judged on the outputs' measurements only" in problem.message
    assert "'conc_a'" in problem.message  # the tags that may carry it


def test_on_a_measurement_it_is_taken(tmp_path: Path) -> None:
    site = load_site(_site_with(tmp_path, "conc_a", 5))
    assert site.tags.tags["conc_a"].frozen_after == 5


def test_predict_on_a_working_setpoint_is_refused_when_the_site_loads(tmp_path: Path) -> None:
    path = _site_with(tmp_path, WORKING, 0, on_bad="predict", predict_cycles=3)
    with pytest.raises(ConfigError) as err:
        load_site(path)
    (problem,) = err.value.problems
    assert (problem.file, problem.location, problem.value) == (
        str(tmp_path / "tags.yaml"),
        f"tags.{WORKING}.on_bad",
        "predict",
    )
    assert "allowed here: 'hold'" in problem.message
