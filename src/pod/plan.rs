//! What a pod worker does next with its containers, decided without doing it: a pure
//! `plan(state, now) -> actions`, like the kubelet's `computePodActions`. The worker builds
//! the [`PodState`] from what it knows, runs the [`Action`]s in order and plans again when a
//! start may let more happen at once (a sidecar that is up at once lets the next init
//! container start in the same sync).

use tokio::time::Instant;

use crate::kube::reasons;

use crate::kube::restart::RestartPolicy;

/// A running container instance, as far as the plan cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// Its startup probe (if any) passed.
    pub started: bool,
    /// Being killed: SIGKILL is due at this time.
    pub kill_at: Option<Instant>,
}

/// One container slot (init containers first, in order, then the app containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub init: bool,
    /// A restartable init container.
    pub sidecar: bool,
    /// A sidecar that has started in this sandbox.
    pub up: bool,
    pub running: Option<RunState>,
    /// Exit code of the last finished instance.
    pub last_exit: Option<i32>,
    /// Why it waits (`ErrImagePull`, `CrashLoopBackOff`, ...), when it does.
    pub waiting: Option<String>,
    /// Not to be started before this time (crash back-off).
    pub not_before: Option<Instant>,
}

/// Everything the plan is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub policy: RestartPolicy,
    pub slots: Vec<SlotState>,
}

/// One step for the worker, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The grace period of a container being killed ran out: SIGKILL it.
    Kill(usize),
    /// Sync again at this time at the latest.
    WakeAt(Instant),
    /// The container may not start before `until`; `crash_loop` when that shows as
    /// `CrashLoopBackOff` (it ran before and does not wait for an image or its config).
    BackOff {
        slot: usize,
        until: Instant,
        crash_loop: bool,
    },
    /// The sidecar has started: the init containers after it may run.
    SidecarUp(usize),
    /// Start (or restart) the container.
    Start(usize),
    /// The pod is done: stop what still runs (sidecars) and finish it.
    Complete,
}

/// `Start`, or `BackOff` while the container's back-off lasts.
pub fn start_or_back_off(i: usize, s: &SlotState, now: Instant) -> Action {
    match s.not_before {
        Some(at) if now < at => Action::BackOff {
            slot: i,
            until: at,
            crash_loop: s.last_exit.is_some()
                && !s.waiting.as_deref().is_some_and(reasons::is_setup_error),
        },
        _ => Action::Start(i),
    }
}

/// What to do now with the pod's containers.
pub fn plan(pod: &PodState, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    for (i, s) in pod.slots.iter().enumerate() {
        if let Some(at) = s.running.as_ref().and_then(|r| r.kill_at) {
            out.push(if now >= at {
                Action::Kill(i)
            } else {
                Action::WakeAt(at)
            });
        }
    }
    // Sidecars that are up are restarted when they exit, whatever the restartPolicy.
    for (i, s) in pod.slots.iter().enumerate() {
        if s.sidecar && s.up && s.running.is_none() {
            out.push(start_or_back_off(i, s, now));
        }
    }
    // Init containers, one at a time, in order; a sidecar lets the next one start once it
    // has started and keeps running.
    for (i, s) in pod.slots.iter().enumerate().filter(|(_, s)| s.init) {
        if s.sidecar {
            if s.up {
                continue;
            }
            match &s.running {
                None => out.push(start_or_back_off(i, s, now)),
                Some(r) if r.started && r.kill_at.is_none() => {
                    out.push(Action::SidecarUp(i));
                    continue;
                }
                Some(_) => {}
            }
            return out;
        }
        if s.running.is_some() {
            return out;
        }
        match s.last_exit {
            Some(0) => continue,
            Some(_) if pod.policy == RestartPolicy::Never => out.push(Action::Complete),
            _ => out.push(start_or_back_off(i, s, now)),
        }
        return out;
    }
    let apps = || pod.slots.iter().enumerate().filter(|(_, s)| !s.init);
    for (i, s) in apps() {
        if s.running.is_some() {
            continue;
        }
        if let Some(code) = s.last_exit {
            let restart = match pod.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Never => false,
            };
            if !restart && s.waiting.is_none() {
                continue;
            }
        }
        out.push(start_or_back_off(i, s, now));
    }
    let all_done = apps().all(|(_, s)| {
        s.running.is_none()
            && s.waiting.is_none()
            && s.last_exit.is_some_and(|code| match pod.policy {
                RestartPolicy::Always => false,
                RestartPolicy::OnFailure => code == 0,
                RestartPolicy::Never => true,
            })
    });
    if all_done {
        out.push(Action::Complete);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use Action::*;

    fn app() -> SlotState {
        SlotState {
            init: false,
            sidecar: false,
            up: false,
            running: None,
            last_exit: None,
            waiting: None,
            not_before: None,
        }
    }

    fn init() -> SlotState {
        SlotState {
            init: true,
            ..app()
        }
    }

    fn sidecar() -> SlotState {
        SlotState {
            sidecar: true,
            ..init()
        }
    }

    fn running(started: bool) -> Option<RunState> {
        Some(RunState {
            started,
            kill_at: None,
        })
    }

    fn exited(mut s: SlotState, code: i32) -> SlotState {
        s.last_exit = Some(code);
        s
    }

    fn run(mut s: SlotState) -> SlotState {
        s.running = running(true);
        s
    }

    #[test]
    fn plans_like_compute_pod_actions() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let backing_off = |mut s: SlotState| {
            s.not_before = Some(later);
            s
        };
        use RestartPolicy::*;
        let cases: Vec<(&str, RestartPolicy, Vec<SlotState>, Vec<Action>)> = vec![
            (
                "a new pod starts its app containers",
                Always,
                vec![app(), app()],
                vec![Start(0), Start(1)],
            ),
            (
                "the first init container first",
                Always,
                vec![init(), init(), app()],
                vec![Start(0)],
            ),
            (
                "a running init container holds the rest",
                Always,
                vec![run(init()), init(), app()],
                vec![],
            ),
            (
                "then the next",
                Always,
                vec![exited(init(), 0), init(), app()],
                vec![Start(1)],
            ),
            (
                "a failed init container is restarted",
                OnFailure,
                vec![exited(init(), 1), app()],
                vec![Start(0)],
            ),
            (
                "or fails a Never pod",
                Never,
                vec![exited(init(), 1), app()],
                vec![Complete],
            ),
            (
                "a crashed app container backs off",
                Always,
                vec![backing_off(exited(app(), 1))],
                vec![BackOff {
                    slot: 0,
                    until: later,
                    crash_loop: true,
                }],
            ),
            (
                "an image wait is no crash loop",
                Always,
                vec![SlotState {
                    waiting: Some("ErrImagePull".into()),
                    ..backing_off(exited(app(), 1))
                }],
                vec![BackOff {
                    slot: 0,
                    until: later,
                    crash_loop: false,
                }],
            ),
            (
                "after its back-off it starts",
                Always,
                vec![SlotState {
                    not_before: Some(now),
                    ..exited(app(), 1)
                }],
                vec![Start(0)],
            ),
            (
                "OnFailure restarts failures only",
                OnFailure,
                vec![exited(app(), 0), exited(app(), 2), run(app())],
                vec![Start(1)],
            ),
            (
                "Never: done when all exited",
                Never,
                vec![exited(app(), 0), exited(app(), 3)],
                vec![Complete],
            ),
            (
                "OnFailure: done when all succeeded",
                OnFailure,
                vec![exited(app(), 0)],
                vec![Complete],
            ),
            (
                "Always is never done",
                Always,
                vec![backing_off(exited(app(), 0))],
                vec![BackOff {
                    slot: 0,
                    until: later,
                    crash_loop: true,
                }],
            ),
            (
                "a waiting Never container is retried",
                Never,
                vec![SlotState {
                    waiting: Some("ErrImageNeverPull".into()),
                    ..app()
                }],
                vec![Start(0)],
            ),
            (
                "a sidecar starts in its turn",
                Always,
                vec![exited(init(), 0), sidecar(), init(), app()],
                vec![Start(1)],
            ),
            (
                "a started sidecar lets the next one run",
                Always,
                vec![
                    SlotState {
                        running: running(true),
                        ..sidecar()
                    },
                    init(),
                    app(),
                ],
                vec![SidecarUp(0), Start(1)],
            ),
            (
                "a sidecar not started yet holds the rest",
                Always,
                vec![
                    SlotState {
                        running: running(false),
                        ..sidecar()
                    },
                    init(),
                    app(),
                ],
                vec![],
            ),
            (
                "a sidecar being killed holds the rest",
                Always,
                vec![
                    SlotState {
                        running: Some(RunState {
                            started: true,
                            kill_at: Some(later),
                        }),
                        ..sidecar()
                    },
                    app(),
                ],
                vec![WakeAt(later)],
            ),
            (
                "an exited sidecar that is up restarts beside the app, under Never too",
                Never,
                vec![
                    SlotState {
                        up: true,
                        ..exited(sidecar(), 0)
                    },
                    run(app()),
                ],
                vec![Start(0)],
            ),
            (
                "with back-off",
                Never,
                vec![
                    SlotState {
                        up: true,
                        ..backing_off(exited(sidecar(), 1))
                    },
                    run(app()),
                ],
                vec![BackOff {
                    slot: 0,
                    until: later,
                    crash_loop: true,
                }],
            ),
            (
                "a Never pod completes by its apps while its sidecar runs",
                Never,
                vec![
                    SlotState {
                        up: true,
                        ..run(sidecar())
                    },
                    exited(app(), 0),
                ],
                vec![Complete],
            ),
            (
                "an Always pod does not",
                Always,
                vec![
                    SlotState {
                        up: true,
                        ..run(sidecar())
                    },
                    run(app()),
                ],
                vec![],
            ),
            (
                "kill deadlines: due ones now, the others wake the worker",
                Always,
                vec![
                    SlotState {
                        running: Some(RunState {
                            started: true,
                            kill_at: Some(now),
                        }),
                        ..app()
                    },
                    SlotState {
                        running: Some(RunState {
                            started: true,
                            kill_at: Some(later),
                        }),
                        ..app()
                    },
                ],
                vec![Kill(0), WakeAt(later)],
            ),
        ];
        for (what, policy, slots, want) in cases {
            let got = plan(&PodState { policy, slots }, now);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn restart_policy_names() {
        assert_eq!(RestartPolicy::parse("Never"), RestartPolicy::Never);
        assert_eq!(RestartPolicy::parse("OnFailure"), RestartPolicy::OnFailure);
        assert_eq!(RestartPolicy::parse("Always"), RestartPolicy::Always);
    }
}
