"""Operating a deployment: what ``frontforce up|down|status|replay`` and ``config check`` do.

The pipeline's consumer groups, as the code names them (one place, so ``status`` and
``replay`` never disagree about what "the pipeline" is):

- ``worker``: the Faust app, group id ``worker.app_id`` (``streams/_app.py``), on
  ``salesforce.changes`` and its own repartition topics (``Settings.worker_topics``; the
  table changelogs and the fast lane's dedupe log are read by assignment, outside any group).
- ``worker-front-events``: the worker's fast lane (``streams/_fastlane.py``), a plain consumer
  in the same process, group ``Settings.fast_lane_group`` (``<app_id>-front-events``), on
  ``front.events``. ``--group worker`` names both worker groups.
- ``sink-salesforce``: ``sink.group_id`` on ``commands.salesforce`` (``sinks/salesforce``).
- ``sink-front``: ``front_sink.group_id`` on ``commands.front`` (``sinks/front``).
"""

from __future__ import annotations

from dataclasses import dataclass

from frontforce.config import Settings


@dataclass(frozen=True)
class Group:
    role: str  # worker | worker-front-events | sink-salesforce | sink-front
    group_id: str
    topics: tuple[str, ...]  # every topic the group consumes (lag)
    replay_topics: tuple[str, ...]  # the topics ``replay`` moves (its inputs from outside)


# Worker topics no consumer group reads: the fast lane's dedupe log (read by assignment).
_NOT_CONSUMED = frozenset({"seen"})


def pipeline_groups(settings: Settings) -> list[Group]:
    t = settings.topics
    internal = tuple(v for k, v in settings.worker_topics.items() if k not in _NOT_CONSUMED)
    fast_lane = getattr(settings, "fast_lane_group", None)
    if fast_lane is None:  # a worker whose Faust agents read front.events themselves
        workers = [Group("worker", settings.worker.app_id,
                         (t.front_events, t.salesforce_changes, *internal),
                         (t.front_events, t.salesforce_changes))]
    else:
        workers = [Group("worker", settings.worker.app_id, (t.salesforce_changes, *internal),
                         (t.salesforce_changes,)),
                   Group("worker-front-events", str(fast_lane), (t.front_events,), (t.front_events,))]
    return [
        *workers,
        Group("sink-salesforce", settings.sink.group_id, (t.commands_salesforce,),
              (t.commands_salesforce,)),
        Group("sink-front", settings.front_sink.group_id, (t.commands_front,), (t.commands_front,)),
    ]


def select_groups(settings: Settings, names: list[str] | None) -> list[Group]:
    """The groups named by role (``worker``) or group id; all of them for none. Raises
    ``ValueError`` naming what is unknown."""
    groups = pipeline_groups(settings)
    if not names:
        return groups
    out: list[Group] = []
    unknown = []
    for n in names:
        # "worker" is the worker process: its Faust group and its fast lane's.
        found = [g for g in groups if n in (g.role, g.group_id)
                 or (n == "worker" and g.role.startswith("worker"))]
        if not found:
            unknown.append(n)
        out.extend(g for g in found if g not in out)
    if unknown:
        known = ", ".join(f"{g.role} ({g.group_id})" for g in groups)
        raise ValueError(f"unknown group {', '.join(unknown)}; the pipeline's groups: {known}")
    return out
