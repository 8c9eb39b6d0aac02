//! Pipeline tests: dedup, forgets, checkpoints and replays through a real node.

mod forget {
    use crate::config::{Config, TargetKind};
    use crate::node::Node;

    fn ev(n: u64, user: &str, item: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"event_id":"e{n}","user":"{user}","ts":{},"kind":"view","item":"{item}"}}"#,
            crate::now_ms() - 1000 + n
        )
        .into_bytes()
    }

    /// Dedup keys survive a reopen; a forgotten user's cached profile is not written back.
    #[test]
    fn dedup_persists_and_forget_drops_the_cached_profile() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        {
            let node = Node::open(&cfg).unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", vec![ev(1, "a", "x"), ev(2, "a", "y")])
                .unwrap();
            let o = node.drain().unwrap();
            assert_eq!((o.applied, o.duplicates), (2, 0));
        }
        let node = Node::open(&cfg).unwrap();
        let mut p = node.pipeline().unwrap();
        let mut reader = node.log.reader().unwrap();
        let mut buf = Vec::new();
        node.log
            .append_blocking(crate::now_ms(), "t", vec![ev(1, "a", "x"), ev(3, "a", "z")])
            .unwrap();
        use crate::log::Source;
        reader
            .read(p.offset(), 100, std::time::Duration::ZERO, &mut buf)
            .unwrap();
        let o = p.process(&buf).unwrap();
        assert_eq!((o.applied, o.duplicates), (1, 1));
        p.checkpoint().unwrap();
        assert_eq!(node.store.user("a").unwrap().unwrap().profile.version, 3);
        // Forget while the pipeline has "a" cached, then apply one more event.
        assert!(node.forget("a").unwrap());
        node.log
            .append_blocking(crate::now_ms(), "t", vec![ev(4, "a", "w")])
            .unwrap();
        buf.clear();
        reader
            .read(p.offset(), 100, std::time::Duration::ZERO, &mut buf)
            .unwrap();
        p.process(&buf).unwrap();
        p.checkpoint().unwrap();
        let state = node.store.user("a").unwrap().unwrap();
        assert_eq!(state.profile.version, 1);
        let recent = node.model.lock().unwrap().recent_names(&state);
        assert_eq!(recent, vec!["w".to_string()]);
    }
}

mod checkpoints {
    use crate::config::{Config, TargetKind};
    use crate::node::Node;

    fn ev(n: u64, user: &str, item: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"event_id":"k{n}","user":"{user}","ts":{},"kind":"view","item":"{item}"}}"#,
            // Fixed event times: runs compared with each other must see the same events.
            1_790_000_000_000 + n * 1000
        )
        .into_bytes()
    }

    fn config(dir: &std::path::Path) -> Config {
        let mut cfg = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        cfg.publish.target = TargetKind::None;
        // No checkpoint but the ones the test asks for.
        cfg.pipeline.checkpoint_interval_ms = 3_600_000;
        cfg
    }

    fn events(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        range
            .map(|n| ev(n, &format!("u{}", n % 7), &format!("i{}", n % 11)))
            .collect()
    }

    /// Applies what the log holds beyond the pipeline's offset, without checkpointing.
    fn apply_all(node: &Node, p: &mut super::super::Pipeline) {
        use crate::log::Source;
        let mut reader = node.log.reader().unwrap();
        let mut buf = Vec::new();
        while p.offset().max(reader.start()) < reader.end() {
            buf.clear();
            let from = p.offset().max(reader.start());
            reader
                .read(from, 16, std::time::Duration::ZERO, &mut buf)
                .unwrap();
            p.process(&buf).unwrap();
        }
    }

    /// The stored profiles after one uninterrupted drain of `payloads` on a fresh node.
    fn uninterrupted(payloads: Vec<Vec<u8>>) -> Vec<(String, attune_core::Profile)> {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(&config(dir.path())).unwrap();
        node.log
            .append_blocking(crate::now_ms(), "t", payloads)
            .unwrap();
        node.drain().unwrap();
        node.store.profiles().unwrap()
    }

    /// A "crash" (the node dropped without a checkpoint) loses nothing and applies nothing
    /// twice: the reopened pipeline replays the log from the checkpoint to the same states.
    #[test]
    fn replay_from_the_checkpoint_reproduces_the_uninterrupted_states() {
        let reference = uninterrupted(events(0..300));
        assert_eq!(reference.iter().map(|p| p.1.version).sum::<u64>(), 300);

        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let node = Node::open(&cfg).unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", events(0..100))
                .unwrap();
            let mut p = node.pipeline().unwrap();
            apply_all(&node, &mut p);
            assert_eq!(p.checkpoint().unwrap(), 1);
            node.log
                .append_blocking(crate::now_ms(), "t", events(100..200))
                .unwrap();
            apply_all(&node, &mut p);
            assert!(p.has_unsaved());
            assert!(p.checkpointed() < p.offset());
            // Crash: no checkpoint for events 100..200.
        }
        let node = Node::open(&cfg).unwrap();
        let applied: u64 = node
            .store
            .profiles()
            .unwrap()
            .iter()
            .map(|p| p.1.version)
            .sum();
        assert_eq!(applied, 100, "the store holds the checkpoint only");
        // Redelivered events (a client retrying after the crash) are duplicates.
        node.log
            .append_blocking(crate::now_ms(), "t", events(150..300))
            .unwrap();
        let o = node.drain().unwrap();
        assert_eq!((o.applied, o.duplicates), (200, 50));
        assert_eq!(node.store.profiles().unwrap(), reference);
    }

    /// A checkpoint writes exactly the changed states, whether all of memory changed or a few
    /// users among many clean ones.
    #[test]
    fn checkpoints_of_many_and_of_few_changed_users_write_the_same_states() {
        let many: Vec<Vec<u8>> = (0..60)
            .map(|n| ev(n, &format!("m{n}"), &format!("i{}", n % 5)))
            .collect();
        let few: Vec<Vec<u8>> = (60..63)
            .map(|n| ev(n, &format!("m{}", n % 4), "i9"))
            .collect();
        let reference = uninterrupted(many.iter().chain(&few).cloned().collect());
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let node = Node::open(&cfg).unwrap();
            let mut p = node.pipeline().unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", many)
                .unwrap();
            apply_all(&node, &mut p);
            // 60 changed of 60 in memory.
            assert_eq!(p.checkpoint().unwrap(), 1);
            node.log.append_blocking(crate::now_ms(), "t", few).unwrap();
            apply_all(&node, &mut p);
            // 3 changed among 60 in memory.
            assert!(p.users.unsaved_len() * 4 < node.live.lock().unwrap().users.len());
            assert_eq!(p.checkpoint().unwrap(), 1);
        }
        let node = Node::open(&cfg).unwrap();
        let stored = node.store.profiles().unwrap();
        assert_eq!(stored.len(), 60);
        assert_eq!(stored, reference);
        assert_eq!(node.store.user("m0").unwrap().unwrap().profile.version, 2);
    }

    /// A forget is not undone by a replay: the user's earlier events stay erased.
    #[test]
    fn forget_survives_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let node = Node::open(&cfg).unwrap();
            node.log
                .append_blocking(crate::now_ms(), "t", events(0..70))
                .unwrap();
            let mut p = node.pipeline().unwrap();
            apply_all(&node, &mut p);
            assert!(node.forget("u3").unwrap());
            node.log
                .append_blocking(crate::now_ms(), "t", vec![ev(1000, "u3", "fresh")])
                .unwrap();
            apply_all(&node, &mut p);
            // Crash before any checkpoint.
        }
        let node = Node::open(&cfg).unwrap();
        node.drain().unwrap();
        let state = node.store.user("u3").unwrap().unwrap();
        assert_eq!(state.profile.version, 1, "only the event after the forget");
        let recent = node.model.lock().unwrap().recent_names(&state);
        assert_eq!(recent, vec!["fresh".to_string()]);
        assert_eq!(node.store.user("u4").unwrap().unwrap().profile.version, 10);
    }
}
