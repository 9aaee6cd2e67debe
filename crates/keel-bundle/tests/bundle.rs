//! Host tests of the bundle format: round trips, tampering, keys, limits, interop with coset.
#![cfg(feature = "std")]

mod common;

use common::*;
use keel_bundle::*;

const SEQ: u64 = 42;

fn policies() -> Policies<'static> {
    Policies {
        app_name: "hello",
        app_version: "1.2.3",
        min_visor_version: visor_version(0, 3, 1),
        debug_key: Some([7; 32]),
        max_trial_crashes: 5,
        max_politeness_time_s: 3600,
        connectivity_grace_time_s: 120,
    }
}

fn build(layers: &[LayerSpec<'_>], seq: u64, key: &SigningKey) -> Vec<u8> {
    let spec = BundleSpec { sequence: seq, layers, policies: policies() };
    build_bundle(&spec, key, reference_region_capacity).unwrap()
}

/// A bundle with an app layer and an app-data layer, and its envelope without payloads.
fn sample() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let app = app_image(1000, 1);
    let data = b"some app data".to_vec();
    let bundle =
        build(&[app_layer(&app), LayerSpec { id: "app-data", target: Target::AppData, bytes: &data }], SEQ, &key(1));
    let envelope = split_bundle(&bundle).unwrap().envelope;
    (bundle, envelope, app, data)
}

#[test]
fn round_trip() {
    let (bundle, envelope, app, data) = sample();
    let split = split_bundle(&bundle).unwrap();
    assert_eq!(split.envelope, envelope);
    assert_eq!(split.layers.len(), 2);
    assert_eq!(
        split.layers[0],
        Layer { id: "app".into(), target: Target::AppSlot, digest: sha256(&app), bytes: app.clone() }
    );
    assert_eq!(split.layers[1].id, "app-data");
    assert_eq!(split.layers[1].bytes, data);

    let trusted = [pubkey(&key(9)), pubkey(&key(1))];
    let m = verify_envelope(&envelope, &trusted, reference_region_capacity).unwrap();
    assert_eq!(m.sequence, SEQ);
    assert_eq!(m.policies, policies());
    assert_eq!(m.components().len(), 2);
    let c = m.component("app").unwrap();
    assert_eq!((c.target, c.size, c.digest), (Target::AppSlot, app.len() as u32, sha256(&app)));
    c.verify_layer(&app).unwrap();
    let d = m.components()[1];
    assert_eq!((d.id, d.target, d.size), ("app-data", Target::AppData, data.len() as u32));
    assert_eq!(m.total_size(), (app.len() + data.len()) as u64);

    // The same manifest from the full bundle (payloads are skipped), and the split verifies too.
    assert_eq!(verify_envelope(&bundle, &trusted, reference_region_capacity).unwrap(), m);
    assert_eq!(split.verify(&trusted).unwrap(), m);
    assert_eq!(split.manifest().unwrap(), m);
    let env = Envelope::parse(&envelope).unwrap();
    assert_eq!(env.verify_signature(&trusted), Ok(1));
    assert_eq!(env.kid(), Some(&key_id(&trusted[1])[..]));
    assert!(env.payloads().is_empty());
    assert_eq!(Envelope::parse(&bundle).unwrap().payloads().len(), 2);

    // Joining the layers (in any order) gives the original bundle back.
    assert_eq!(join_bundle(&envelope, &[&data, &app]).unwrap(), bundle);
    assert_eq!(split.to_bundle().unwrap(), bundle);
}

#[test]
fn building_is_deterministic_and_starts_with_the_suit_envelope_tag() {
    let app = app_image(64, 2);
    let a = build(&[app_layer(&app)], 1, &key(1));
    assert_eq!(a, build(&[app_layer(&app)], 1, &key(1)));
    assert_eq!(&a[..2], &[0xd8, 107]);
}

#[test]
fn sequence_numbers_round_trip() {
    let app = app_image(16, 3);
    for seq in [0, 1, 23, 24, 255, 256, 65_535, 65_536, u32::MAX as u64, u32::MAX as u64 + 1, u64::MAX - 1, u64::MAX] {
        let b = build(&[app_layer(&app)], seq, &key(2));
        let m = verify_envelope(&b, &[pubkey(&key(2))], reference_region_capacity).unwrap();
        assert_eq!(m.sequence, seq);
    }
}

#[test]
fn default_policies_round_trip_and_absent_policy_map_means_defaults() {
    let app = app_image(16, 3);
    let spec = BundleSpec { sequence: 1, layers: &[app_layer(&app)], policies: Policies::default() };
    let b = build_bundle(&spec, &key(1), reference_region_capacity).unwrap();
    let m = verify_envelope(&b, &[pubkey(&key(1))], reference_region_capacity).unwrap();
    assert_eq!(m.policies, Policies::default());
    assert_eq!(m.policies.max_trial_crashes, DEFAULT_MAX_TRIAL_CRASHES);
    assert_eq!(m.policies.debug_key, None);

    // A plain SUIT manifest without the Keel member gets the defaults.
    let env = wrap(&manifest_v(5, &app).enc(), &key(1), &Wrap::default());
    let m = verify_envelope(&env, &[pubkey(&key(1))], reference_region_capacity).unwrap();
    assert_eq!((m.sequence, m.policies), (5, Policies::default()));
}

#[test]
fn tampering_any_byte_of_the_envelope_is_rejected() {
    let (_, envelope, _, _) = sample();
    let trusted = [pubkey(&key(1))];
    verify_envelope(&envelope, &trusted, reference_region_capacity).unwrap();
    for pos in 0..envelope.len() {
        for mask in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
            let mut bad = envelope.clone();
            bad[pos] ^= mask;
            let r = verify_envelope(&bad, &trusted, reference_region_capacity);
            assert!(r.is_err(), "byte {pos} ^ {mask:#x} accepted");
        }
    }
    // Truncation at every length and one byte too many.
    for len in 0..envelope.len() {
        assert!(verify_envelope(&envelope[..len], &trusted, reference_region_capacity).is_err());
    }
    let mut long = envelope.clone();
    long.push(0);
    assert_eq!(verify_envelope(&long, &trusted, reference_region_capacity), Err(Error::TrailingBytes("SUIT_Envelope")));
}

#[test]
fn tampering_any_byte_of_a_full_bundle_is_rejected_by_split_or_verify() {
    let (bundle, _, _, _) = sample();
    let trusted = [pubkey(&key(1))];
    for pos in 0..bundle.len() {
        let mut bad = bundle.clone();
        bad[pos] ^= 0x04;
        let ok = split_bundle(&bad).and_then(|s| s.verify(&trusted).map(|_| ()));
        assert!(ok.is_err(), "byte {pos} accepted");
    }
}

#[test]
fn specific_tampering_gives_specific_errors() {
    let (bundle, envelope, app, _) = sample();
    let trusted = [pubkey(&key(1))];
    let env = Envelope::parse(&envelope).unwrap();

    // A byte of the manifest: the digest no longer matches.
    let manifest_at = envelope.windows(4).position(|w| w == [0xa4, 0x01, 0x01, 0x02]).unwrap();
    let mut bad = envelope.clone();
    bad[manifest_at + 4] ^= 1; // the sequence number
    assert_eq!(verify_envelope(&bad, &trusted, reference_region_capacity), Err(Error::ManifestDigestMismatch));

    // The kid, and the signature after it (kid, nil, bstr head of 2 bytes, 64 bytes).
    let kid = key_id(&trusted[0]);
    let at = envelope.windows(8).position(|w| w == kid).unwrap();
    assert_eq!(&envelope[at + 8..at + 11], &[0xf6, 0x58, 0x40]);
    let mut bad = envelope.clone();
    bad[at + 11 + 63] ^= 1;
    assert_eq!(verify_envelope(&bad, &trusted, reference_region_capacity), Err(Error::BadSignature));
    let mut bad = envelope.clone();
    bad[at] ^= 1;
    assert_eq!(verify_envelope(&bad, &trusted, reference_region_capacity), Err(Error::UnknownSigner));

    // A layer byte inside the full bundle.
    let at = bundle.len() - 20 - 13; // inside the app image, before the app-data payload
    let mut bad = bundle.clone();
    bad[at] ^= 1;
    assert_eq!(split_bundle(&bad), Err(Error::LayerDigestMismatch));
    assert!(env.check_manifest_digest().is_ok());
    let _ = app;
}

#[test]
fn wrong_key_and_unknown_signer() {
    let (_, envelope, _, _) = sample();
    let (good, other) = (pubkey(&key(1)), pubkey(&key(2)));
    assert_eq!(verify_envelope(&envelope, &[other], reference_region_capacity), Err(Error::UnknownSigner));
    assert_eq!(verify_envelope(&envelope, &[], reference_region_capacity), Err(Error::UnknownSigner));
    verify_envelope(&envelope, &[other, good], reference_region_capacity).unwrap();

    let app = app_image(32, 4);
    let manifest = manifest_v(1, &app).enc();
    // Signed by key 2 but claiming key 1's kid: the signature fails.
    let forged = wrap(&manifest, &key(2), &Wrap { kid: Some(key_id(&good).to_vec()), ..Wrap::default() });
    assert_eq!(verify_envelope(&forged, &[good], reference_region_capacity), Err(Error::BadSignature));
    // Without a kid every trusted key is tried.
    let no_kid = wrap(&manifest, &key(2), &Wrap { kid: Some(vec![]), ..Wrap::default() });
    assert_eq!(verify_envelope(&no_kid, &[good], reference_region_capacity), Err(Error::BadSignature));
    assert_eq!(Envelope::parse(&no_kid).unwrap().verify_signature(&[good, other]), Ok(1));
    assert_eq!(verify_envelope(&no_kid, &[], reference_region_capacity), Err(Error::UnknownSigner));
    // A trusted "key" that is not a valid point is simply never matched.
    let not_a_point =
        (0..=255u8).map(|b| [b; 32]).find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err()).unwrap();
    assert_eq!(Envelope::parse(&no_kid).unwrap().verify_signature(&[not_a_point, other]), Ok(1));
}

#[test]
fn hand_made_envelopes_verify_tagged_or_not() {
    let app = app_image(32, 4);
    let manifest = manifest_v(7, &app).enc();
    let trusted = [pubkey(&key(3))];
    for (envelope_tag, cose_tag) in [(true, true), (false, true), (true, false), (false, false)] {
        let env = wrap(&manifest, &key(3), &Wrap { envelope_tag, cose_tag, ..Wrap::default() });
        let m = verify_envelope(&env, &trusted, reference_region_capacity).unwrap();
        assert_eq!(m.sequence, 7);
    }
}

#[test]
fn layer_digest_mismatch() {
    let (_, envelope, app, data) = sample();
    let m = Envelope::parse(&envelope).unwrap().manifest_unverified().unwrap();
    let mut bad = app.clone();
    bad[300] ^= 1;
    assert_eq!(m.component("app").unwrap().verify_layer(&bad), Err(Error::LayerDigestMismatch));
    assert_eq!(m.component("app").unwrap().verify_layer(&app[1..]), Err(Error::LayerDigestMismatch));
    assert_eq!(join_bundle(&envelope, &[&bad, &data]), Err(Error::MissingLayer));
    assert_eq!(join_bundle(&envelope, &[&app]), Err(Error::MissingLayer));
    assert_eq!(join_bundle(&envelope, &[&app, &data, b"extra"]), Err(Error::UnexpectedLayer));

    // Payloads that are missing, extra or wrong in a hand-made envelope.
    let manifest = manifest_v(1, &app).enc();
    let k = key(1);
    let with = |extra: Vec<(V, V)>| wrap(&manifest, &k, &Wrap { extra, ..Wrap::default() });
    assert_eq!(split_bundle(&with(vec![])), Err(Error::MissingLayer));
    assert_eq!(split_bundle(&with(vec![(V::T("#app".into()), V::B(bad.clone()))])), Err(Error::LayerDigestMismatch));
    let extra = vec![(V::T("#app".into()), V::B(app.clone())), (V::T("#other".into()), V::B(vec![1]))];
    assert_eq!(split_bundle(&with(extra)), Err(Error::UnexpectedLayer));
    let dup = vec![(V::T("#app".into()), V::B(app.clone())), (V::T("#app".into()), V::B(app.clone()))];
    assert_eq!(split_bundle(&with(dup)), Err(Error::DuplicateField("integrated payload")));
    let bad_key = vec![(V::T("app".into()), V::B(app.clone()))];
    assert_eq!(split_bundle(&with(bad_key)), Err(Error::InvalidValue("integrated payload key")));
    split_bundle(&with(vec![(V::T("#app".into()), V::B(app.clone()))])).unwrap();
}

#[test]
fn layers_must_fit_their_regions() {
    let app = app_image(1000, 1);
    let layers = [app_layer(&app)];
    let spec = BundleSpec { sequence: 1, layers: &layers, policies: Policies::default() };
    let small = |_: &Component<'_>| Some(1000);
    assert_eq!(build_bundle(&spec, &key(1), small), Err(Error::LayerTooLarge));
    assert_eq!(build_bundle(&spec, &key(1), |_: &Component<'_>| None), Err(Error::NoRegion));
    let exact = |_: &Component<'_>| Some(1256);
    let b = build_bundle(&spec, &key(1), exact).unwrap();

    // The device's regions may be smaller than the builder assumed.
    let trusted = [pubkey(&key(1))];
    assert_eq!(verify_envelope(&b, &trusted, small), Err(Error::LayerTooLarge));
    let only_visor = |c: &Component<'_>| (c.target == Target::VisorSlot).then_some(1 << 20);
    assert_eq!(verify_envelope(&b, &trusted, only_visor), Err(Error::NoRegion));
    verify_envelope(&b, &trusted, exact).unwrap();

    // The reference board: an app slot is 2 MiB + 8 KiB.
    let c = Component { id: "app", target: Target::AppSlot, size: 0x20_2000, digest: [0; 32] };
    assert_eq!(c.check_fits(reference_region_capacity), Ok(()));
    let c = Component { size: 0x20_2001, ..c };
    assert_eq!(c.check_fits(reference_region_capacity), Err(Error::LayerTooLarge));
}

#[test]
fn builder_rejects_bad_input() {
    let app = app_image(100, 1);
    let k = key(1);
    let try_build = |layers: &[LayerSpec<'_>], policies: Policies<'_>| {
        build_bundle(&BundleSpec { sequence: 1, layers, policies }, &k, reference_region_capacity)
    };
    let p = Policies::default();
    assert_eq!(try_build(&[], p), Err(Error::MissingField("layers")));
    let garbage = vec![0x55u8; 400];
    assert_eq!(try_build(&[app_layer(&garbage)], p), Err(Error::BadAppImage));
    assert_eq!(try_build(&[app_layer(&app[..200])], p), Err(Error::BadAppImage));
    let mut bad_digest = app.clone();
    bad_digest[300] ^= 1;
    assert_eq!(try_build(&[app_layer(&bad_digest)], p), Err(Error::BadAppImage));
    for id in ["", "App", "1app", "app_x", "a-very-long-component-id"] {
        let l = LayerSpec { id, target: Target::AppData, bytes: b"x" };
        assert_eq!(try_build(&[l], p), Err(Error::InvalidValue("component id")), "{id}");
    }
    let d = |id| LayerSpec { id, target: Target::AppData, bytes: b"x" };
    assert_eq!(try_build(&[d("a"), d("a")], p), Err(Error::InvalidValue("duplicate component id")));
    assert_eq!(try_build(&[d("a"), d("b"), d("c"), d("d"), d("e")], p), Err(Error::TooManyComponents));
    try_build(&[d("a"), d("b"), d("c"), d("d")], p).unwrap();
    assert_eq!(try_build(&[LayerSpec { bytes: b"", ..d("a") }], p), Err(Error::InvalidValue("empty layer")));
    let long = "x".repeat(MAX_TEXT_LEN + 1);
    let l = [app_layer(&app)];
    assert_eq!(try_build(&l, Policies { app_name: &long, ..p }), Err(Error::InvalidValue("app name")));
    assert_eq!(try_build(&l, Policies { app_version: "a\0b", ..p }), Err(Error::InvalidValue("app version")));
    assert_eq!(try_build(&l, Policies { max_trial_crashes: 0, ..p }), Err(Error::InvalidValue("max trial crashes")));
    try_build(&l, Policies { app_name: &long[1..], ..p }).unwrap();
}

#[test]
fn size_limits() {
    let big = vec![0u8; MAX_BUNDLE_SIZE + 1];
    assert_eq!(Envelope::parse(&big).unwrap_err(), Error::TooLarge);
    let huge = |_: &Component<'_>| Some(u32::MAX);
    let half = vec![1u8; MAX_BUNDLE_SIZE / 2];
    let l = |id| LayerSpec { id, target: Target::AppData, bytes: &half };
    let spec = BundleSpec { sequence: 1, layers: &[l("a"), l("b"), l("c")], policies: Policies::default() };
    assert_eq!(build_bundle(&spec, &key(1), huge), Err(Error::TooLarge));
    // Two halves plus the envelope are just over the limit too.
    let spec = BundleSpec { layers: &[l("a"), l("b")], ..spec };
    assert_eq!(build_bundle(&spec, &key(1), huge), Err(Error::TooLarge));

    // Sizes claimed by a manifest are bounded as well.
    let k = key(1);
    let one = |size: u64| {
        let mut m = manifest_v(1, b"x");
        if let V::M(e) = &mut m {
            let common = V::M(vec![
                (i(2), V::A(vec![V::A(vec![V::B(b"app".to_vec())])])),
                (
                    i(4),
                    bw(V::A(vec![
                        V::U(12),
                        V::U(0),
                        V::U(20),
                        V::M(vec![
                            (i(3), bw(V::A(vec![i(-16), V::B(vec![0; 32])]))),
                            (i(14), V::U(size)),
                            (i(-256), V::U(3)),
                        ]),
                    ])),
                ),
            ]);
            e[2].1 = bw(common);
        }
        verify_envelope(&wrap(&m.enc(), &k, &Wrap::default()), &[pubkey(&k)], huge).map(|m| m.total_size())
    };
    assert_eq!(one(MAX_BUNDLE_SIZE as u64), Ok(MAX_BUNDLE_SIZE as u64));
    assert_eq!(one(MAX_BUNDLE_SIZE as u64 + 1), Err(Error::TooLarge));
    assert_eq!(one(u64::MAX), Err(Error::TooLarge));
    assert_eq!(one(0), Err(Error::InvalidValue("suit-parameter-image-size")));
}

/// Signs a hand-made manifest and verifies it.
fn verify_manifest(m: V) -> Result<u64, Error> {
    let k = key(5);
    let env = wrap(&m.enc(), &k, &Wrap::default());
    verify_envelope(&env, &[pubkey(&k)], |_: &Component<'_>| Some(u32::MAX)).map(|m| m.sequence)
}

/// Replaces entry `key` of the map `m` (or appends it).
fn set(m: &mut V, key: i64, value: V) {
    let V::M(entries) = m else { panic!() };
    match entries.iter_mut().find(|(k, _)| matches!(k, V::N(n) if *n == key)) {
        Some(e) => e.1 = value,
        None => entries.push((i(key), value)),
    }
}

fn remove(m: &mut V, key: i64) {
    let V::M(entries) = m else { panic!() };
    entries.retain(|(k, _)| !matches!(k, V::N(n) if *n == key));
}

fn common_with(components: V, shared: V) -> V {
    bw(V::M(vec![(i(2), components), (i(4), bw(shared))]))
}

fn app_id() -> V {
    V::A(vec![V::B(b"app".to_vec())])
}

#[test]
fn malformed_manifests_give_clear_errors() {
    let layer = b"layer";
    let base = manifest_v(9, layer);
    assert_eq!(verify_manifest(base.clone()), Ok(9));

    let with = |key: i64, value: V| {
        let mut m = base.clone();
        set(&mut m, key, value);
        verify_manifest(m)
    };
    let without = |key: i64| {
        let mut m = base.clone();
        remove(&mut m, key);
        verify_manifest(m)
    };
    assert_eq!(with(1, V::U(2)), Err(Error::UnsupportedManifestVersion));
    assert_eq!(with(1, V::T("1".into())), Err(Error::Malformed("suit-manifest-version")));
    assert_eq!(with(2, i(-1)), Err(Error::Malformed("suit-manifest-sequence-number")));
    assert_eq!(without(1), Err(Error::MissingField("suit-manifest-version")));
    assert_eq!(without(2), Err(Error::MissingField("suit-manifest-sequence-number")));
    assert_eq!(without(3), Err(Error::MissingField("suit-common")));
    // SUIT members outside the subset: suit-validate, suit-invoke, suit-text, reference URI.
    for k in [4, 7, 9, 23] {
        assert_eq!(with(k, V::B(vec![0x80])), Err(Error::Unsupported("SUIT_Manifest member")), "{k}");
    }
    // A duplicated key.
    let mut m = base.enc();
    m[0] += 1; // one more entry ...
    m.extend(V::N(2).enc()); // ... repeating the sequence number
    m.extend(V::U(1).enc());
    let env = wrap(&m, &key(5), &Wrap::default());
    assert_eq!(
        verify_envelope(&env, &[pubkey(&key(5))], reference_region_capacity),
        Err(Error::DuplicateField("suit-manifest-sequence-number"))
    );
    // Trailing bytes inside the manifest bstr.
    let mut m = base.enc();
    m.push(0);
    let env = wrap(&m, &key(5), &Wrap::default());
    assert_eq!(
        verify_envelope(&env, &[pubkey(&key(5))], reference_region_capacity),
        Err(Error::TrailingBytes("SUIT_Manifest"))
    );
    // Indefinite-length map.
    let mut m = base.enc();
    m[0] = 0xbf;
    m.push(0xff);
    let env = wrap(&m, &key(5), &Wrap::default());
    assert_eq!(
        verify_envelope(&env, &[pubkey(&key(5))], reference_region_capacity),
        Err(Error::Malformed("SUIT_Manifest"))
    );

    // suit-common.
    let seq1 = || V::A(vec![V::U(12), V::U(0), V::U(20), params(layer, 1)]);
    let ok = common_with(V::A(vec![app_id()]), seq1());
    assert_eq!(with(3, ok), Ok(9));
    assert_eq!(with(3, bw(V::M(vec![(i(2), V::A(vec![app_id()]))]))), Err(Error::MissingField("suit-shared-sequence")));
    assert_eq!(with(3, bw(V::M(vec![(i(4), bw(seq1()))]))), Err(Error::MissingField("suit-components")));
    assert_eq!(with(3, common_with(V::A(vec![]), seq1())), Err(Error::MissingField("suit-components: no component")));
    let five = V::A(["a", "b", "c", "d", "e"].iter().map(|s| V::A(vec![V::B(s.as_bytes().to_vec())])).collect());
    assert_eq!(with(3, common_with(five, seq1())), Err(Error::TooManyComponents));
    let two_part = V::A(vec![V::A(vec![V::B(b"app".to_vec()), V::B(b"x".to_vec())])]);
    assert_eq!(
        with(3, common_with(two_part, seq1())),
        Err(Error::Unsupported("component identifier with more than one element"))
    );
    let upper = V::A(vec![V::A(vec![V::B(b"APP".to_vec())])]);
    assert_eq!(with(3, common_with(upper, seq1())), Err(Error::InvalidValue("component id")));
    let dup = V::A(vec![app_id(), app_id()]);
    assert_eq!(with(3, common_with(dup, seq1())), Err(Error::InvalidValue("duplicate component id")));
    let mut common = V::M(vec![(i(2), V::A(vec![app_id()])), (i(4), bw(seq1()))]);
    set(&mut common, 1, V::A(vec![])); // suit-dependencies
    assert_eq!(with(3, bw(common)), Err(Error::Unsupported("SUIT_Common member")));

    // The shared sequence.
    let shared = |s: Vec<V>| with(3, common_with(V::A(vec![app_id()]), V::A(s)));
    assert_eq!(shared(vec![V::U(20), params(layer, 1)]), Ok(9)); // default component index 0
    assert_eq!(
        shared(vec![V::U(12), V::U(1), V::U(20), params(layer, 1)]),
        Err(Error::InvalidValue("component index"))
    );
    assert_eq!(
        shared(vec![V::U(12), V::Bool(true), V::U(20), params(layer, 1)]),
        Err(Error::Malformed("suit-directive-set-component-index"))
    );
    assert_eq!(shared(vec![V::U(19), params(layer, 1)]), Err(Error::Unsupported("SUIT command")));
    assert_eq!(shared(vec![V::U(1), V::U(15), V::U(20), params(layer, 1)]), Err(Error::Unsupported("SUIT command")));
    assert_eq!(shared(vec![V::U(20), params(layer, 1), V::U(12)]), Err(Error::Malformed("suit-shared-sequence")));
    assert_eq!(
        shared(vec![V::U(20), params(layer, 1), V::U(20), params(layer, 1)]),
        Err(Error::DuplicateField("suit-directive-override-parameters"))
    );
    assert_eq!(shared(vec![V::U(12), V::U(0)]), Err(Error::MissingField("suit-parameter-image-digest")));
    let p = |entries: Vec<(V, V)>| shared(vec![V::U(20), V::M(entries)]);
    let digest = || bw(V::A(vec![i(-16), V::B(sha256(layer).to_vec())]));
    assert_eq!(p(vec![(i(3), digest()), (i(-256), V::U(1))]), Err(Error::MissingField("suit-parameter-image-size")));
    assert_eq!(p(vec![(i(3), digest()), (i(14), V::U(5))]), Err(Error::MissingField("Keel target parameter")));
    assert_eq!(p(vec![(i(3), digest()), (i(14), V::U(5)), (i(-256), V::U(9))]), Err(Error::UnknownTarget));
    assert_eq!(
        p(vec![(i(3), digest()), (i(14), V::U(5)), (i(-256), V::U(1)), (i(21), V::T("#app".into()))]),
        Err(Error::Unsupported("SUIT parameter"))
    );
    let sha384 = bw(V::A(vec![i(-43), V::B(vec![0; 48])]));
    assert_eq!(p(vec![(i(3), sha384), (i(14), V::U(5)), (i(-256), V::U(1))]), Err(Error::UnsupportedDigestAlgorithm));
    let short = bw(V::A(vec![i(-16), V::B(vec![0; 31])]));
    assert_eq!(
        p(vec![(i(3), short), (i(14), V::U(5)), (i(-256), V::U(1))]),
        Err(Error::InvalidValue("suit-digest-bytes"))
    );
}

#[test]
fn keel_policies_decode_strictly_but_skip_negative_keys() {
    let base = manifest_v(3, b"layer");
    let pol = |entries: Vec<(V, V)>| {
        let mut m = base.clone();
        set(&mut m, -256, V::M(entries));
        let k = key(5);
        let env = wrap(&m.enc(), &k, &Wrap::default());
        let r = verify_envelope(&env, &[pubkey(&k)], |_: &Component<'_>| Some(u32::MAX)).map(|m| m.policies);
        r.map(|p| (p.app_name.to_string(), p.max_trial_crashes, p.connectivity_grace_time_s, p.debug_key))
    };
    assert_eq!(pol(vec![]), Ok((String::new(), DEFAULT_MAX_TRIAL_CRASHES, DEFAULT_CONNECTIVITY_GRACE_TIME_S, None)));
    assert_eq!(pol(vec![(i(1), V::T("x".into())), (i(5), V::U(1)), (i(7), V::U(0))]), Ok(("x".into(), 1, 0, None)));
    assert_eq!(pol(vec![(i(4), V::B(vec![9; 32]))]).unwrap().3, Some([9; 32]));
    assert_eq!(pol(vec![(i(4), V::B(vec![9; 33]))]), Err(Error::InvalidValue("debug key")));
    assert_eq!(pol(vec![(i(5), V::U(0))]), Err(Error::InvalidValue("max trial crashes")));
    assert_eq!(pol(vec![(i(5), V::U(256))]), Err(Error::InvalidValue("max trial crashes")));
    assert_eq!(pol(vec![(i(6), V::U(1 << 32))]), Err(Error::InvalidValue("max politeness time")));
    assert_eq!(pol(vec![(i(1), V::T("x".repeat(32)))]), Err(Error::InvalidValue("app name")));
    assert_eq!(pol(vec![(i(1), V::B(b"x".to_vec()))]), Err(Error::Malformed("app name")));
    assert_eq!(pol(vec![(i(1), V::T("x".into())), (i(1), V::T("y".into()))]), Err(Error::DuplicateField("app name")));
    assert_eq!(pol(vec![(i(8), V::U(1))]), Err(Error::Unsupported("Keel policy")));
    assert_eq!(pol(vec![(V::T("x".into()), V::U(1))]), Err(Error::Unsupported("Keel policy")));
    // Negative keys are ignorable extensions, whatever their value.
    let nested = V::M(vec![(i(1), V::A(vec![V::Null, V::Tag(1, Box::new(V::U(5))), V::M(vec![])]))]);
    assert_eq!(pol(vec![(i(-1), nested), (i(1), V::T("y".into()))]).unwrap().0, "y");
}

#[test]
fn malformed_envelopes_give_clear_errors() {
    let layer = b"layer";
    let manifest = manifest_v(1, layer).enc();
    let k = key(6);
    let trusted = [pubkey(&k)];
    let check = |env: Vec<u8>| verify_envelope(&env, &trusted, reference_region_capacity).map(|m| m.sequence);
    let w = Wrap::default;

    assert_eq!(check(wrap(&manifest, &k, &w())), Ok(1));
    assert_eq!(check(wrap(&manifest, &k, &Wrap { alg: -7, ..w() })), Err(Error::UnsupportedSignatureAlgorithm));
    assert_eq!(check(wrap(&manifest, &k, &Wrap { digest_alg: -44, ..w() })), Err(Error::UnsupportedDigestAlgorithm));
    assert_eq!(check(wrap(&manifest, &k, &Wrap { digest: Some([0; 32]), ..w() })), Err(Error::ManifestDigestMismatch));
    let severable = vec![(i(23), V::B(vec![0xa0]))];
    assert_eq!(
        check(wrap(&manifest, &k, &Wrap { extra: severable, ..w() })),
        Err(Error::Unsupported("SUIT_Envelope member"))
    );
    let dup = vec![(i(3), V::B(manifest.clone()))];
    assert_eq!(check(wrap(&manifest, &k, &Wrap { extra: dup, ..w() })), Err(Error::DuplicateField("suit-manifest")));
    assert_eq!(check(V::Tag(108, Box::new(V::M(vec![]))).enc()), Err(Error::Malformed("SUIT_Envelope tag")));
    assert_eq!(check(V::M(vec![]).enc()), Err(Error::MissingField("suit-authentication-wrapper")));
    assert_eq!(check(V::A(vec![]).enc()), Err(Error::Malformed("SUIT_Envelope")));
    assert_eq!(check(vec![]), Err(Error::Malformed("SUIT_Envelope")));

    // The authentication wrapper and COSE_Sign1, hand-assembled.
    let manifest_item = V::B(manifest.clone()).enc();
    let digest_payload = V::A(vec![i(-16), V::B(sha256(&manifest_item).to_vec())]).enc();
    let good_sign1 = sign1(&digest_payload, &k, &w());
    let env_with = |auth: V| V::M(vec![(i(2), bw(auth)), (i(3), V::Raw(manifest_item.clone()))]).enc();
    let auth = |blocks: Vec<V>| {
        let mut a = vec![V::B(digest_payload.clone())];
        a.extend(blocks);
        V::A(a)
    };
    assert_eq!(check(env_with(auth(vec![V::B(good_sign1.clone())]))), Ok(1));
    assert_eq!(check(env_with(auth(vec![]))), Err(Error::MissingField("COSE_Sign1")));
    assert_eq!(check(env_with(V::A(vec![]))), Err(Error::MissingField("SUIT_Digest")));
    let two = auth(vec![V::B(good_sign1.clone()), V::B(good_sign1.clone())]);
    assert_eq!(check(env_with(two)), Err(Error::Unsupported("more than one authentication block")));
    let as_array = auth(vec![V::Raw(good_sign1.clone())]);
    assert_eq!(check(env_with(as_array)), Err(Error::Malformed("COSE_Sign1")));

    let protected = V::M(vec![(i(1), i(-8))]).enc();
    let sig = V::B(vec![0; 64]);
    let cose = |items: Vec<V>| V::B(V::Tag(18, Box::new(V::A(items))).enc());
    let c = |items: Vec<V>| check(env_with(auth(vec![cose(items)])));
    assert_eq!(c(vec![V::B(protected.clone()), V::M(vec![]), V::Null, sig.clone()]), Err(Error::BadSignature));
    assert_eq!(
        c(vec![V::B(protected.clone()), V::M(vec![]), V::B(digest_payload.clone()), sig.clone()]),
        Err(Error::Malformed("COSE_Sign1 payload (must be detached: nil)"))
    );
    assert_eq!(c(vec![V::B(protected.clone()), V::M(vec![]), V::Null]), Err(Error::Malformed("COSE_Sign1")));
    assert_eq!(
        c(vec![V::B(protected.clone()), V::M(vec![]), V::Null, V::B(vec![0; 63])]),
        Err(Error::InvalidValue("COSE_Sign1 signature"))
    );
    assert_eq!(
        c(vec![V::B(protected.clone()), V::M(vec![(i(1), i(-8))]), V::Null, sig.clone()]),
        Err(Error::Unsupported("COSE unprotected header parameter"))
    );
    let with_crit = V::M(vec![(i(1), i(-8)), (i(2), V::A(vec![i(99)]))]).enc();
    assert_eq!(
        c(vec![V::B(with_crit), V::M(vec![]), V::Null, sig.clone()]),
        Err(Error::Unsupported("COSE protected header parameter"))
    );
    assert_eq!(
        c(vec![V::B(vec![]), V::M(vec![]), V::Null, sig.clone()]),
        Err(Error::Malformed("COSE protected header"))
    );
    assert_eq!(
        c(vec![V::B(V::M(vec![]).enc()), V::M(vec![]), V::Null, sig.clone()]),
        Err(Error::MissingField("COSE alg"))
    );
    let wrong_tag = V::B(V::Tag(17, Box::new(V::A(vec![]))).enc());
    assert_eq!(check(env_with(auth(vec![wrong_tag]))), Err(Error::Malformed("COSE_Sign1 tag (must be 18)")));
}

#[test]
fn our_cose_sign1_is_standard_coset_verifies_it() {
    use coset::{iana, CborSerializable, CoseSign1, TaggedCborSerializable};
    let (_, envelope, _, _) = sample();
    let k = key(1);
    // Dig the authentication wrapper out with coset's own CBOR library.
    let value: ciborium::Value = ciborium::from_reader(&envelope[..]).unwrap();
    let ciborium::Value::Tag(107, inner) = value else { panic!("not tag 107") };
    let ciborium::Value::Map(entries) = *inner else { panic!() };
    let auth =
        entries.iter().find(|(key, _)| key == &ciborium::Value::Integer(2.into())).unwrap().1.as_bytes().unwrap();
    let manifest_bstr = entries.iter().find(|(key, _)| key == &ciborium::Value::Integer(3.into())).unwrap().1.clone();
    let auth: ciborium::Value = ciborium::from_reader(&auth[..]).unwrap();
    let blocks = auth.as_array().unwrap();
    let digest_payload = blocks[0].as_bytes().unwrap();
    let sign1_bytes = blocks[1].as_bytes().unwrap();

    // The SUIT_Digest is SHA-256 over the encoded manifest bstr.
    let mut manifest_item = Vec::new();
    ciborium::into_writer(&manifest_bstr, &mut manifest_item).unwrap();
    let digest: ciborium::Value = ciborium::from_reader(&digest_payload[..]).unwrap();
    assert_eq!(digest.as_array().unwrap()[0], ciborium::Value::Integer((-16).into()));
    assert_eq!(digest.as_array().unwrap()[1].as_bytes().unwrap(), &sha256(&manifest_item).to_vec());

    let sign1 = CoseSign1::from_tagged_slice(sign1_bytes).unwrap();
    assert_eq!(sign1.protected.header.alg, Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA)));
    assert_eq!(sign1.unprotected.key_id, key_id(&pubkey(&k)).to_vec());
    assert_eq!(sign1.payload, None);
    let vk = k.verifying_key();
    sign1
        .verify_detached_signature(digest_payload, b"", |sig, data| {
            vk.verify_strict(data, &ed25519_dalek::Signature::from_slice(sig).unwrap())
        })
        .unwrap();
    // And a tampered payload fails under coset too.
    let mut bad = digest_payload.to_vec();
    bad[5] ^= 1;
    assert!(sign1
        .verify_detached_signature(&bad, b"", |sig, data| {
            vk.verify_strict(data, &ed25519_dalek::Signature::from_slice(sig).unwrap())
        })
        .is_err());
    let _ = CoseSign1::from_slice(&sign1_bytes[1..]).unwrap(); // untagged form parses too
}

#[test]
fn a_coset_made_cose_sign1_verifies_here() {
    use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
    use ed25519_dalek::Signer;
    let app = app_image(50, 9);
    let manifest = manifest_v(11, &app).enc();
    let manifest_item = V::B(manifest).enc();
    let digest_payload = V::A(vec![i(-16), V::B(sha256(&manifest_item).to_vec())]).enc();
    let k = key(7);
    for with_kid in [true, false] {
        let mut unprotected = HeaderBuilder::new();
        if with_kid {
            unprotected = unprotected.key_id(key_id(&pubkey(&k)).to_vec());
        }
        let sign1 = CoseSign1Builder::new()
            .protected(HeaderBuilder::new().algorithm(iana::Algorithm::EdDSA).build())
            .unprotected(unprotected.build())
            .create_detached_signature(&digest_payload, b"", |data| k.sign(data).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .unwrap();
        let auth = V::A(vec![V::B(digest_payload.clone()), V::B(sign1)]);
        let env = V::Tag(107, Box::new(V::M(vec![(i(2), bw(auth)), (i(3), V::Raw(manifest_item.clone()))]))).enc();
        let m = verify_envelope(&env, &[pubkey(&key(1)), pubkey(&k)], reference_region_capacity).unwrap();
        assert_eq!(m.sequence, 11);
        assert_eq!(Envelope::parse(&env).unwrap().verify_signature(&[pubkey(&key(1)), pubkey(&k)]), Ok(1));
    }
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let (bundle, envelope, _, _) = sample();
    let trusted = [pubkey(&key(1))];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let cap = |_: &Component<'_>| Some(u32::MAX);
    // Pure noise, biased towards CBOR-looking starts.
    for _ in 0..20_000 {
        let len = rng.below(200);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if !b.is_empty() && rng.below(2) == 0 {
            b[0] = [0xd8, 0xa2, 0xa3, 0x82, 0x84][rng.below(5)];
        }
        assert!(verify_envelope(&b, &trusted, cap).is_err());
        let _ = split_bundle(&b);
        let _ = Envelope::parse(&b).map(|e| e.manifest_unverified());
    }
    // Mutations of a valid envelope and bundle: flips, overwrites, insertions, deletions.
    for round in 0..20_000 {
        let mut b = if round % 4 == 0 { bundle.clone() } else { envelope.clone() };
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(b.len());
            match rng.below(4) {
                0 => b[pos] ^= 1 << rng.below(8),
                1 => b[pos] = rng.next() as u8,
                2 => b.insert(pos, rng.next() as u8),
                _ => {
                    b.remove(pos);
                }
            }
        }
        let _ = verify_envelope(&b, &trusted, cap);
        let _ = split_bundle(&b).map(|s| s.verify(&trusted).map(|m| m.sequence));
        let _ = Envelope::parse(&b).map(|e| e.manifest_unverified().map(|m| m.total_size()));
    }
}

#[test]
fn key_files() {
    let k = generate_signing_key();
    assert_ne!(k.to_bytes(), generate_signing_key().to_bytes());
    let pem = secret_key_to_pem(&k).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(secret_key_from_pem(&pem).unwrap().to_bytes(), k.to_bytes());
    let pub_pem = public_key_to_pem(&k.verifying_key()).unwrap();
    assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(public_key_from_text(&pub_pem), Ok(pubkey(&k)));
    let hex: String = pubkey(&k).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(public_key_from_text(&format!(" {hex}\n")), Ok(pubkey(&k)));
    assert_eq!(public_key_from_text(&hex.to_uppercase()), Ok(pubkey(&k)));
    assert!(matches!(public_key_from_text(&hex[1..]), Err(Error::BadKey(_))));
    assert!(matches!(public_key_from_text(&"zz".repeat(32)), Err(Error::BadKey(_))));
    let not_a_point =
        (0..=255u8).map(|b| [b; 32]).find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err()).unwrap();
    let not_a_point: String = not_a_point.iter().map(|b| format!("{b:02x}")).collect();
    assert!(matches!(public_key_from_text(&not_a_point), Err(Error::BadKey(_))));
    assert!(matches!(secret_key_from_pem("nonsense"), Err(Error::BadKey(_))));
    assert!(matches!(secret_key_from_pem(&pub_pem), Err(Error::BadKey(_))));

    // Written by `openssl genpkey -algorithm ed25519`; public key from `openssl pkey -pubout`.
    let openssl_secret = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIM2lSNfCrxmZyxeXwhwpNRY5T93U6CdKTZooQF/k0Z2A\n\
        -----END PRIVATE KEY-----\n";
    let openssl_public = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEADGEcQENyT04MrZfBpGkyWJNMVrvgSwvpZttXFNlh8NM=\n\
        -----END PUBLIC KEY-----\n";
    let expected_pub = "0c611c4043724f4e0cad97c1a4693258934c56bbe04b0be966db5714d961f0d3";
    let sk = secret_key_from_pem(openssl_secret).unwrap();
    assert_eq!(public_key_from_text(openssl_public), public_key_from_text(expected_pub));
    assert_eq!(Ok(pubkey(&sk)), public_key_from_text(expected_pub));
    // We write exactly what OpenSSL writes (PKCS#8 v1).
    assert_eq!(&*secret_key_to_pem(&sk).unwrap(), openssl_secret);
    assert_eq!(public_key_to_pem(&sk.verifying_key()).unwrap(), openssl_public);

    // Files: created 0600, never overwritten.
    let dir = std::env::temp_dir().join(format!("keel-bundle-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("signing.key");
    let _ = std::fs::remove_file(&path);
    write_secret_key_file(&path, &k).unwrap();
    assert_eq!(read_secret_key_file(&path).unwrap().to_bytes(), k.to_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(write_secret_key_file(&path, &k).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    std::fs::write(&path, "garbage").unwrap();
    assert_eq!(read_secret_key_file(&path).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn versions_and_key_ids() {
    assert_eq!(visor_version(1, 2, 3), 0x0102_0003);
    assert_eq!(split_visor_version(visor_version(255, 0, 65535)), (255, 0, 65535));
    assert!(visor_version(0, 10, 0) > visor_version(0, 9, 999));
    assert!(visor_version(1, 0, 0) > visor_version(0, 255, 65535));
    assert_eq!(keel_bundle::parse_visor_version("1.2.3"), Some(visor_version(1, 2, 3)));
    for bad in ["", "1.2", "1.2.3.4", "256.0.0", "1.x.3", "1.2.-3", "1..3"] {
        assert_eq!(keel_bundle::parse_visor_version(bad), None, "{bad:?}");
    }
    let pk = pubkey(&key(1));
    assert_eq!(key_id(&pk)[..], sha256(&pk)[..KEY_ID_LEN]);
    assert_eq!(Target::from_wire(2), Some(Target::VisorSlot));
    assert_eq!(Target::from_wire(0), None);
    assert_eq!(Target::AppData.to_wire(), 3);
    assert_eq!(Error::BadSignature.to_string(), "bad signature");
}

/// The example in docs/bundle-format.md: a fixed key and a 16-byte app image give these exact
/// bytes, so any change of the wire format shows up here.
#[test]
fn known_answer_envelope() {
    const ENVELOPE: &str = "d86ba202587d825824822f5820f27d1d02e262eeec1ac0c220a44febd705e896847fe347f1d09be2191cab800b\
        5854d28443a10127a1044834750f98bd59fcfcf65840038d2f8fbcf6ba03be0c9f8f4086f9715fce3e43e024786d11e889ab1eb0\
        5cfff358f130af7b46ca51276f3332c3ac665fe9a80cb531d131de52f53468189c08035860a40101020703583ea2028181436170\
        70045833840c0014a3035824822f5820f89e3d3bab649180abc9831b0ca22002b058ee3a34859882a74d6611256786c00e190110\
        38ff0138ffa6016568656c6c6f0265312e302e3003000503060007183c";
    let image = [0xAAu8; 16];
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", "1.0.0", (1, 0));
    let mut app = h.to_bytes().to_vec();
    app.extend(image);
    let k = key(1);
    let policies = Policies { app_name: "hello", app_version: "1.0.0", ..Policies::default() };
    let spec = BundleSpec { sequence: 7, layers: &[app_layer(&app)], policies };
    let bundle = build_bundle(&spec, &k, reference_region_capacity).unwrap();
    let envelope = split_bundle(&bundle).unwrap().envelope;
    let hex: String = envelope.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, ENVELOPE);
    assert_eq!(envelope.len(), 230);
    let m = verify_envelope(&envelope, &[pubkey(&k)], reference_region_capacity).unwrap();
    assert_eq!((m.sequence, m.components()[0].size), (7, 272));
    assert_eq!(key_id(&pubkey(&k)), [0x34, 0x75, 0x0f, 0x98, 0xbd, 0x59, 0xfc, 0xfc]);
}
