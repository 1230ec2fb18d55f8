//! Tests of the disk interface on both implementations, and of the simulated disk's
//! durability model itself.

use super::*;

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE as usize]
}

async fn read_all(f: &File) -> Vec<u8> {
    let len = f.len().await.unwrap();
    let mut buf = vec![0; len as usize];
    f.read_exact_at(0, &mut buf).await.unwrap();
    buf
}

/// The operations every implementation must agree on.
async fn exercise(dir: Dir) {
    let f = dir.create("a").await.unwrap();
    assert_eq!(
        dir.create("a").await.unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    assert_eq!(f.append(b"hello").await.unwrap(), 0);
    assert_eq!(f.append(b" world").await.unwrap(), 5);
    f.write_at(0, b"J").await.unwrap();
    assert_eq!(read_all(&f).await, b"Jello world");
    let mut short = [0_u8; 8];
    assert_eq!(f.read_at(7, &mut short).await.unwrap(), 4);
    assert_eq!(
        f.read_exact_at(7, &mut short).await.unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
    f.set_len(5).await.unwrap();
    assert_eq!(read_all(&f).await, b"Jello");
    f.write_at(8, b"!").await.unwrap();
    assert_eq!(read_all(&f).await, b"Jello\0\0\0!");
    f.sync_data().await.unwrap();
    // Eviction is a hint: the bytes read back the same, at once and once it has run (on the
    // real disk it runs on the blocking pool).
    f.evict(0, 9);
    assert_eq!(read_all(&f).await, b"Jello\0\0\0!");
    tokio::task::yield_now().await;
    f.sync_data().await.unwrap();
    assert_eq!(read_all(&f).await, b"Jello\0\0\0!");

    let sub = dir.sub_dir("p-0").await.unwrap();
    sub.create("x").await.unwrap();
    assert_eq!(
        dir.list().await.unwrap(),
        vec!["a".to_owned(), "p-0".to_owned()]
    );
    dir.rename("a", "b").await.unwrap();
    assert_eq!(
        dir.open("a").await.unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    let g = dir.open("b").await.unwrap();
    assert_eq!(read_all(&g).await, b"Jello\0\0\0!");
    // Rename replaces an existing target atomically.
    let c = dir.create("c").await.unwrap();
    c.append(b"new").await.unwrap();
    dir.rename("c", "b").await.unwrap();
    assert_eq!(read_all(&dir.open("b").await.unwrap()).await, b"new");
    dir.remove("b").await.unwrap();
    assert_eq!(
        dir.remove("b").await.unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        dir.create("../x").await.unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        dir.create("").await.unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    dir.sync().await.unwrap();
    assert_eq!(sub.list().await.unwrap(), vec!["x".to_owned()]);

    // A directory renames whole, never onto a name in use, and is removed whole.
    let p1 = dir.sub_dir("p-1").await.unwrap();
    p1.create("y").await.unwrap().append(b"Y").await.unwrap();
    let inner = p1.sub_dir("inner").await.unwrap();
    inner.create("z").await.unwrap();
    dir.create("f").await.unwrap();
    let kind = |r: io::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(dir.rename_dir("p-1", "p-0").await),
        io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(dir.rename_dir("p-1", "f").await),
        io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(dir.rename_dir("gone", "q").await),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        kind(dir.rename_dir("f", "q").await),
        io::ErrorKind::NotADirectory
    );
    assert_eq!(
        kind(dir.rename_dir("p-1", "../q").await),
        io::ErrorKind::InvalidInput
    );
    dir.rename_dir("p-1", "p-1.aside").await.unwrap();
    assert_eq!(
        dir.list().await.unwrap(),
        vec!["f".to_owned(), "p-0".to_owned(), "p-1.aside".to_owned()]
    );
    let aside = dir.sub_dir("p-1.aside").await.unwrap();
    assert_eq!(
        aside.list().await.unwrap(),
        vec!["inner".to_owned(), "y".to_owned()]
    );
    assert_eq!(read_all(&aside.open("y").await.unwrap()).await, b"Y");
    assert_eq!(
        aside.sub_dir("inner").await.unwrap().list().await.unwrap(),
        vec!["z".to_owned()]
    );
    assert_eq!(
        kind(dir.remove_all("f").await),
        io::ErrorKind::NotADirectory
    );
    dir.remove_all("p-1.aside").await.unwrap();
    assert_eq!(
        kind(dir.remove_all("p-1.aside").await),
        io::ErrorKind::NotFound
    );
    dir.sync().await.unwrap();
    assert_eq!(
        dir.list().await.unwrap(),
        vec!["f".to_owned(), "p-0".to_owned()]
    );
    // The name is free again, and a directory made under it is new and empty.
    assert!(dir
        .sub_dir("p-1")
        .await
        .unwrap()
        .list()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn real_disk_behaves() {
    let tmp = tempfile::tempdir().unwrap();
    exercise(Dir::real(tmp.path().join("d")).unwrap()).await;
}

#[tokio::test]
async fn sim_disk_behaves() {
    exercise(Dir::sim(&SimDisk::new("n0", 1))).await;
}

#[tokio::test]
async fn synced_writes_always_survive_a_crash() {
    for seed in 0..200 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let f = root.create("log").await.unwrap();
        root.sync().await.unwrap();
        f.append(&page(1)).await.unwrap();
        f.append(&[2; 700]).await.unwrap();
        f.sync_data().await.unwrap();
        // Unsynced writes after the sync, including an overwrite of synced bytes' page.
        f.append(&page(3)).await.unwrap();
        disk.crash();
        let f = root.open("log").await.unwrap();
        let got = read_all(&f).await;
        assert!(
            got.len() >= PAGE_SIZE as usize + 700,
            "seed {seed}: synced length lost"
        );
        assert_eq!(&got[..PAGE_SIZE as usize], &page(1)[..], "seed {seed}");
        assert_eq!(
            &got[PAGE_SIZE as usize..PAGE_SIZE as usize + 700],
            &[2; 700][..],
            "seed {seed}"
        );
    }
}

#[tokio::test]
async fn unsynced_writes_are_sometimes_kept_torn_or_dropped() {
    let (mut kept, mut torn, mut dropped) = (0, 0, 0);
    for seed in 0..300 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let f = root.create("log").await.unwrap();
        root.sync().await.unwrap();
        f.append(&page(0xAA)).await.unwrap();
        f.sync_data().await.unwrap();
        // Overwrite the synced page without syncing: the length does not change, so every
        // outcome shows in the bytes.
        f.write_at(0, &page(0x55)).await.unwrap();
        disk.crash();
        let got = read_all(&root.open("log").await.unwrap()).await;
        assert_eq!(got.len(), PAGE_SIZE as usize);
        let new_sectors = got
            .chunks(SECTOR_SIZE as usize)
            .take_while(|s| s.iter().all(|&b| b == 0x55))
            .count();
        let rest_old = got[new_sectors * SECTOR_SIZE as usize..]
            .iter()
            .all(|&b| b == 0xAA);
        assert!(
            rest_old,
            "seed {seed}: a torn page is a prefix of new sectors then old data"
        );
        match new_sectors {
            0 => dropped += 1,
            8 => kept += 1,
            _ => torn += 1,
        }
    }
    assert!(
        kept > 30 && torn > 30 && dropped > 30,
        "kept {kept} torn {torn} dropped {dropped}"
    );
}

#[tokio::test]
async fn unsynced_appends_may_vanish_or_leave_zeros() {
    let (mut whole, mut gone, mut partial) = (0, 0, 0);
    for seed in 0..300 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let f = root.create("log").await.unwrap();
        root.sync().await.unwrap();
        f.append(&[7; 3 * PAGE_SIZE as usize]).await.unwrap();
        disk.crash();
        let got = read_all(&root.open("log").await.unwrap()).await;
        assert!(
            got.iter().all(|&b| b == 7 || b == 0),
            "seed {seed}: only written bytes or zeros"
        );
        if got.is_empty() {
            gone += 1;
        } else if got.len() == 3 * PAGE_SIZE as usize && got.iter().all(|&b| b == 7) {
            whole += 1;
        } else {
            partial += 1;
        }
    }
    assert!(
        whole > 0 && gone > 0 && partial > 0,
        "whole {whole} gone {gone} partial {partial}"
    );
}

#[tokio::test]
async fn unsynced_names_may_be_lost_synced_ones_never() {
    let (mut lost, mut kept) = (0, 0);
    for seed in 0..200 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let a = root.create("a").await.unwrap();
        a.append(b"A").await.unwrap();
        a.sync_data().await.unwrap();
        root.sync().await.unwrap();
        let b = root.create("b").await.unwrap();
        b.append(b"B").await.unwrap();
        b.sync_data().await.unwrap(); // data synced, name not
        root.rename("a", "c").await.unwrap();
        disk.crash();
        let names = root.list().await.unwrap();
        // Pending operations survive as a prefix: never the rename without the create.
        assert!(
            names == ["a"] || names == ["a", "b"] || names == ["b", "c"],
            "seed {seed}: {names:?}"
        );
        if names.contains(&"b".to_owned()) {
            kept += 1;
        } else {
            lost += 1;
        }
    }
    assert!(lost > 0 && kept > 0, "lost {lost} kept {kept}");
}

#[tokio::test]
async fn a_renamed_directory_goes_whole_with_what_it_holds() {
    let (mut renamed, mut stayed) = (0, 0);
    for seed in 0..200 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let d = root.sub_dir("t-0").await.unwrap();
        root.sync().await.unwrap();
        let a = d.create("a").await.unwrap();
        a.append(b"A").await.unwrap();
        a.sync_data().await.unwrap();
        d.sync().await.unwrap();
        let b = d.create("b").await.unwrap();
        b.append(b"B").await.unwrap();
        b.sync_data().await.unwrap(); // data synced, name not
        root.rename_dir("t-0", "t-0.aside").await.unwrap();
        let synced = seed % 2 == 0;
        if synced {
            root.sync().await.unwrap();
        }
        disk.crash();
        let names = root.list().await.unwrap();
        if names == ["t-0.aside"] {
            renamed += 1;
            let inside = root.sub_dir("t-0.aside").await.unwrap().list().await;
            // The rename carries the creation before it inside the directory.
            assert_eq!(inside.unwrap(), ["a", "b"], "seed {seed}");
            // Nothing of the old directory is left under its old name.
            let again = root.sub_dir("t-0").await.unwrap();
            assert!(again.list().await.unwrap().is_empty(), "seed {seed}");
        } else {
            assert!(!synced, "seed {seed}: a synced rename was lost: {names:?}");
            assert_eq!(names, ["t-0"], "seed {seed}");
            stayed += 1;
            let inside = root.sub_dir("t-0").await.unwrap().list().await.unwrap();
            assert!(inside == ["a"] || inside == ["a", "b"], "seed {seed}");
        }
    }
    assert!(
        renamed > 100 && stayed > 0,
        "renamed {renamed} stayed {stayed}"
    );
}

#[tokio::test]
async fn a_removed_directory_never_comes_back_in_part() {
    let (mut whole, mut partial, mut gone) = (0, 0, 0);
    for seed in 0..200 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let d = root.sub_dir("t-0").await.unwrap();
        for name in ["a", "b", "c"] {
            let f = d.create(name).await.unwrap();
            f.append(name.as_bytes()).await.unwrap();
            f.sync_data().await.unwrap();
        }
        d.sync().await.unwrap();
        root.sync().await.unwrap();
        root.remove_all("t-0").await.unwrap();
        assert!(root.list().await.unwrap().is_empty());
        let synced = seed % 2 == 0;
        if synced {
            root.sync().await.unwrap();
        }
        disk.crash();
        if root.list().await.unwrap().is_empty() {
            gone += 1;
            // Made again, the directory is new: nothing of the old one shows up in it.
            let again = root.sub_dir("t-0").await.unwrap();
            assert!(again.list().await.unwrap().is_empty(), "seed {seed}");
            continue;
        }
        assert!(!synced, "seed {seed}: a synced removal was lost");
        let left = root.sub_dir("t-0").await.unwrap().list().await.unwrap();
        // Removed in reverse name order: what a crash keeps is a prefix.
        let all = ["a", "b", "c"].map(String::from);
        assert!(all.starts_with(&left), "seed {seed}: {left:?}");
        if left.len() == 3 {
            whole += 1;
        } else {
            partial += 1;
        }
    }
    assert!(
        gone > 100 && whole > 0 && partial > 0,
        "gone {gone} whole {whole} partial {partial}"
    );
}

#[tokio::test]
async fn unsynced_truncation_may_come_back() {
    let mut resurrected = 0;
    for seed in 0..100 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let f = root.create("log").await.unwrap();
        root.sync().await.unwrap();
        f.append(&page(9)).await.unwrap();
        f.sync_data().await.unwrap();
        f.set_len(100).await.unwrap();
        disk.crash();
        let len = root.open("log").await.unwrap().len().await.unwrap();
        assert!(len == 100 || len == PAGE_SIZE, "seed {seed}: {len}");
        resurrected += usize::from(len == PAGE_SIZE);
    }
    assert!(resurrected > 0 && resurrected < 100);
}

#[tokio::test]
async fn failed_sync_loses_unsynced_data_and_is_reported() {
    let mut changed = 0;
    for seed in 0..100 {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let f = root.create("log").await.unwrap();
        root.sync().await.unwrap();
        f.append(&page(1)).await.unwrap();
        f.sync_data().await.unwrap();
        f.append(&page(2)).await.unwrap();
        disk.set_file_faults(
            "log",
            Some(Faults {
                sync_eio: 1.0,
                ..Faults::default()
            }),
        );
        let err = f.sync_data().await.unwrap_err();
        assert_eq!(err.raw_os_error(), None, "wrapped with context");
        assert!(err.to_string().contains("Input/output error"), "{err}");
        let got = read_all(&f).await;
        assert_eq!(
            &got[..PAGE_SIZE as usize],
            &page(1)[..],
            "synced data stays"
        );
        changed += usize::from(
            got.len() != 2 * PAGE_SIZE as usize || got[PAGE_SIZE as usize..] != page(2)[..],
        );
    }
    assert!(
        changed > 10,
        "a failed sync must lose data in some seeds: {changed}"
    );
}

#[tokio::test]
async fn handles_die_with_a_crash() {
    let disk = SimDisk::new("n0", 3);
    let root = Dir::sim(&disk);
    let f = root.create("x").await.unwrap();
    root.sync().await.unwrap();
    disk.crash();
    assert_eq!(
        f.append(b"late").await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[tokio::test]
async fn injected_faults_fire() {
    let disk = SimDisk::new("n0", 4);
    let root = Dir::sim(&disk);
    let f = root.create("x").await.unwrap();
    f.append(&page(0)).await.unwrap();

    disk.set_faults(Faults {
        read_eio: 1.0,
        ..Faults::default()
    });
    let mut buf = [0_u8; 16];
    assert!(f
        .read_at(0, &mut buf)
        .await
        .unwrap_err()
        .to_string()
        .contains("Input/output error"));

    disk.set_faults(Faults {
        read_bitflip: 1.0,
        ..Faults::default()
    });
    let mut buf = vec![0_u8; PAGE_SIZE as usize];
    f.read_exact_at(0, &mut buf).await.unwrap();
    assert_eq!(
        buf.iter().map(|b| b.count_ones()).sum::<u32>(),
        1,
        "exactly one bit flipped"
    );

    disk.set_faults(Faults {
        write_eio: 1.0,
        ..Faults::default()
    });
    assert!(f.append(b"x").await.is_err());
    assert_eq!(
        f.len().await.unwrap(),
        PAGE_SIZE,
        "a failed write writes nothing"
    );

    disk.set_faults(Faults::default());
    disk.set_capacity(Some(PAGE_SIZE + 10));
    f.append(&[1; 10]).await.unwrap();
    let err = f.append(b"y").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);

    disk.set_capacity(None);
    let before = read_all(&f).await;
    let pos = disk.corrupt("x").unwrap();
    let after = read_all(&f).await;
    assert_ne!(before[pos as usize], after[pos as usize]);
    assert_eq!(disk.corrupt("missing"), None);
}

#[tokio::test]
async fn latency_is_injected_on_simulated_time() {
    let disk = SimDisk::new("n0", 5);
    let root = Dir::sim(&disk);
    let f = root.create("x").await.unwrap();
    disk.set_faults(Faults {
        latency: Latency::uniform(Duration::from_millis(20), Duration::from_millis(20)),
        ..Faults::default()
    });
    let t = tokio::time::Instant::now();
    f.append(b"slow").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(20));
}

#[tokio::test]
async fn latency_is_per_kind_of_operation() {
    let disk = SimDisk::new("n0", 5);
    let root = Dir::sim(&disk);
    let f = root.create("x").await.unwrap();
    disk.set_faults(Faults {
        latency: Latency {
            sync: Some((Duration::from_millis(50), Duration::from_millis(50))),
            ..Latency::default()
        },
        ..Faults::default()
    });
    let t = tokio::time::Instant::now();
    f.append(b"fast").await.unwrap();
    let mut buf = [0; 4];
    f.read_at(0, &mut buf).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(40),
        "writes and reads take no time"
    );
    f.sync_data().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "the sync takes its latency"
    );
}

#[tokio::test]
async fn a_stalled_disk_holds_every_operation_until_the_stall_ends() {
    let disk = SimDisk::new("n0", 5);
    let root = Dir::sim(&disk);
    let f = root.create("x").await.unwrap();
    let t = tokio::time::Instant::now();
    disk.stall(Duration::from_millis(300));
    f.append(b"held").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    // A crash during a stall finds the held write not done.
    disk.stall(Duration::from_millis(300));
    let (d, g) = (disk.clone(), f.clone());
    let write = crate::task::spawn(async move { g.append(b"lost").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.crash();
    let _ = write.await;
    let reopened = root.open("x").await;
    if let Ok(r) = reopened {
        assert!(
            r.len().await.unwrap() <= 4,
            "the held write never reached the disk"
        );
    }
}

#[tokio::test]
async fn crashes_are_deterministic_per_seed() {
    async fn run(seed: u64) -> (Vec<u8>, CrashStats) {
        let disk = SimDisk::new("n0", seed);
        let root = Dir::sim(&disk);
        let f = root.create("x").await.unwrap();
        root.sync().await.unwrap();
        for i in 0..20_u8 {
            f.append(&vec![i; 1500]).await.unwrap();
            if i % 7 == 0 {
                f.sync_data().await.unwrap();
            }
        }
        let stats = disk.crash();
        (read_all(&root.open("x").await.unwrap()).await, stats)
    }
    for seed in 0..20 {
        assert_eq!(run(seed).await, run(seed).await);
    }
}

#[tokio::test]
async fn a_wipe_removes_all_but_what_is_kept() {
    let disk = SimDisk::new("n0", 1);
    let root = Dir::sim(&disk);
    for name in ["meta-0", "t-0", "t-1"] {
        let d = root.sub_dir(name).await.unwrap();
        let f = d.create("00.log").await.unwrap();
        f.append(name.as_bytes()).await.unwrap();
        f.sync_data().await.unwrap();
        d.sync().await.unwrap();
    }
    root.create("marker").await.unwrap();
    root.sync().await.unwrap();
    let old = root
        .sub_dir("t-0")
        .await
        .unwrap()
        .open("00.log")
        .await
        .unwrap();
    let removed = disk.wipe(|path| path.starts_with("meta-0"));
    assert_eq!(removed, 5, "t-0, t-1, their logs and the marker");
    assert_eq!(root.list().await.unwrap(), vec!["meta-0".to_owned()]);
    let kept = root
        .sub_dir("meta-0")
        .await
        .unwrap()
        .open("00.log")
        .await
        .unwrap();
    assert_eq!(read_all(&kept).await, b"meta-0");
    assert!(
        old.len().await.is_err(),
        "a handle from before the wipe is dead"
    );
}

use std::time::Duration;
