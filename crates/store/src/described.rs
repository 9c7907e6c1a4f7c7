//! Anatomy and view from what a header says in words and orientation, for
//! routing when neither the attribute nor its code names them. Body Part
//! Examined is Type 3 in CR and often left out; View Position is Type 2
//! and often empty. A stitched long-leg image with neither got a chest
//! result; a lateral chest with an empty View Position was analysed as a
//! frontal one, though its Patient Orientation said lateral.

/// Words of a description that name the chest: any of them and the
/// descriptions are no evidence against a chest image.
const CHEST_WORDS: &[&str] = &[
    "CHEST",
    "THORAX",
    "THORAKS",
    "TORAX",
    "TÓRAX",
    "TORACE",
    "LUNG",
    "LUNGS",
    "LUNGE",
    "POUMON",
    "POUMONS",
    "PULMONAIRE",
    "PULMON",
    "PULMONES",
    "PULMONAR",
    "POLMONE",
    "POLMONI",
    "BRUST",
    "BRUSTKORB",
    "BORST",
    "CXR",
];

/// Words of a description that name another body part (PS3.16 Annex L
/// terms, their common forms and abbreviations, in English, German,
/// French, Spanish, Italian), with the term they stand for. Words that are
/// also positioning vocabulary ("face", French for frontal; "head up";
/// "hand-held detector") are left out or read with the next word.
const OTHER_PARTS: &[(&str, &[&str])] = &[
    (
        "ABDOMEN",
        &[
            "ABDOMEN",
            "ABDOMINAL",
            "ABD",
            "ABDO",
            "AXR",
            "KUB",
            "IVU",
            "BAUCH",
        ],
    ),
    ("PELVIS", &["PELVIS", "BECKEN", "BASSIN"]),
    ("HIP", &["HIP", "HIPS", "HÜFTE", "HUEFTE", "CADERA"]),
    (
        "LEG",
        &[
            "LEG",
            "LEGS",
            "FEMUR",
            "TIBIA",
            "FIBULA",
            "TIB",
            "FIB",
            "KNEE",
            "KNEES",
            "KNIE",
            "GENOU",
            "RODILLA",
            "GINOCCHIO",
        ],
    ),
    (
        "ANKLE",
        &["ANKLE", "ANKLES", "SPRUNGGELENK", "CHEVILLE", "TOBILLO"],
    ),
    (
        "FOOT",
        &[
            "FOOT",
            "FEET",
            "TOE",
            "TOES",
            "HEEL",
            "CALCANEUS",
            "CALCIS",
            "FUSS",
            "PIED",
        ],
    ),
    (
        "HAND",
        &[
            "HAND", "HANDS", "FINGER", "FINGERS", "THUMB", "SCAPHOID", "MANO",
        ],
    ),
    ("WRIST", &["WRIST", "WRISTS", "HANDGELENK", "POIGNET"]),
    (
        "ARM",
        &[
            "ARM",
            "FOREARM",
            "ELBOW",
            "HUMERUS",
            "ELLENBOGEN",
            "COUDE",
            "CODO",
        ],
    ),
    (
        "SHOULDER",
        &[
            "SHOULDER",
            "SHOULDERS",
            "CLAVICLE",
            "SCAPULA",
            "SCHULTER",
            "ÉPAULE",
            "EPAULE",
            "HOMBRO",
        ],
    ),
    ("RIB", &["RIB", "RIBS", "STERNUM", "RIPPEN"]),
    (
        "SKULL",
        &[
            "SKULL",
            "SINUS",
            "SINUSES",
            "MANDIBLE",
            "JAW",
            "ORBIT",
            "ORBITS",
            "FACIAL",
            "CEPH",
            "CEPHALOMETRIC",
            "OPG",
            "SCHÄDEL",
            "SCHAEDEL",
            "CRÂNE",
            "CRANE",
            "CRÁNEO",
            "CRANEO",
        ],
    ),
    ("NECK", &["NECK"]),
    (
        "SPINE",
        &[
            "SPINE",
            "CSPINE",
            "TSPINE",
            "LSPINE",
            "LUMBAR",
            "LUMBOSACRAL",
            "CERVICAL",
            "SACRUM",
            "COCCYX",
            "SCOLIOSIS",
            "HWS",
            "BWS",
            "LWS",
            "WIRBELSÄULE",
            "WIRBELSAEULE",
            "RACHIS",
            "COLUMNA",
        ],
    ),
    (
        "EXTREMITY",
        &["EXTREMITY", "EXTREMITIES", "LIMB", "SKELETAL"],
    ),
];

/// Words after which a body part's word is positioning, not the anatomy
/// ("hand held detector", "arms up", "spine board").
const POSITIONING_NEXT: &[&str] = &[
    "HELD", "UP", "DOWN", "FIRST", "BOARD", "RAISED", "ELEVATED", "REST", "SUPPORT",
];

/// The words of a text, upper case, split at anything not a letter or digit
/// ("Long_Leg-Stitched" is LONG, LEG, STITCHED).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_uppercase)
}

/// Whether `value` is `term` or holds it as a word, case ignored: Body Part
/// Examined "CHEST PA" or "CHEST_PA" is CHEST.
pub fn names_term(value: &str, term: &str) -> bool {
    let term = term.trim();
    let plural = format!("{term}S");
    value.trim().eq_ignore_ascii_case(term)
        || words(value).any(|w| w.eq_ignore_ascii_case(term) || w.eq_ignore_ascii_case(&plural))
}

/// The body part another than the chest that the descriptions name, as
/// "LEG (Series Description word "LEG")" (the word, never the whole
/// value: a description may hold the patient's name, and the reason goes
/// to the log and the API); None when one of them
/// names the chest, or none names a body part. `descriptions` are
/// (attribute name, value).
pub(crate) fn body_part_in_descriptions<'a>(
    descriptions: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Option<String> {
    let names_chest = descriptions
        .clone()
        .into_iter()
        .any(|(_, text)| words(text).any(|w| CHEST_WORDS.contains(&w.as_str())));
    if names_chest {
        return None;
    }
    descriptions.into_iter().find_map(|(attribute, text)| {
        let all: Vec<String> = words(text).collect();
        all.iter().enumerate().find_map(|(i, w)| {
            let positioning = all
                .get(i + 1)
                .is_some_and(|next| POSITIONING_NEXT.contains(&next.as_str()));
            OTHER_PARTS
                .iter()
                .find(|(_, forms)| !positioning && forms.contains(&w.as_str()))
                .map(|(term, _)| format!("{term} ({attribute} word \"{w}\")"))
        })
    })
}

/// "LATERAL (Patient Orientation P\F)" when Patient Orientation's main
/// directions (each value's first letter, PS3.3 C.7.6.1.1.1) are
/// antero-posterior and head-feet (a lateral projection: a frontal one has
/// a left-right axis; "AL\F" is a steep oblique); None otherwise.
pub(crate) fn lateral_from_orientation(orientation: &str) -> Option<String> {
    let main: Vec<char> = orientation
        .split('\\')
        .filter_map(|d| d.trim().chars().next())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let antero_posterior = main.iter().any(|c| matches!(c, 'A' | 'P'));
    let left_right = main.iter().any(|c| matches!(c, 'L' | 'R'));
    (main.len() == 2 && antero_posterior && !left_right)
        .then(|| format!("LATERAL (Patient Orientation {})", orientation.trim()))
}

/// Words of a description that name a lateral projection: English,
/// German, French, Spanish, Italian, Dutch, Polish and Swedish forms and
/// the usual abbreviations (not Turkish "yan": a common name, in a
/// description that names the patient, skipped a frontal chest) (not LL nor RL: in German they are also Linkslage and
/// Rückenlage, a lateral decubitus and a supine AP, both frontal beams).
/// Compared without accents.
const LATERAL_WORDS: &[&str] = &[
    "LAT",
    "LATERAL",
    "LATERALE",
    "LATÉRAL",
    "LATÉRALE",
    "LATEROLATERALE",
    "LATERAAL",
    "LLAT",
    "RLAT",
    "SEITLICH",
    "SEITLICHE",
    "SEITLICHER",
    "SEITLICHEN",
    "SEITL",
    "PROFIL",
    "PROFILE",
    "PERFIL",
    "ZIJ",
    "ZIJAANZICHT",
    "ZIJDELINGS",
    "ZIJDELINGSE",
    "BOCZNE",
    "BOCZNA",
    "BOCZNY",
    "BOCZNEJ",
    "BOCZNYM",
    "SIDOBILD",
];

/// Words that name a frontal projection, or a view that is frontal though
/// it says "lateral" ("lateral decubitus": an AP or PA beam on a patient
/// lying on the side).
const FRONTAL_WORDS: &[&str] = &[
    "PA",
    "AP",
    "APPA",
    "PAAP",
    "DV",
    "VD",
    "FRONTAL",
    "FRONTALE",
    "FRONT",
    "FACE",
    "FRENTE",
    "SAGITTAL",
    "SAG",
    "UPRIGHT",
    "ERECT",
    "SUPINE",
    "DECUBITUS",
    "DECUBITO",
    "DECUB",
    "DEC",
];

/// Beginnings of words naming a frontal beam in one word or two, whatever
/// their ending ("posteroanterior", "postero-anteriore", "póstero-anterior",
/// "postéro-antérieur", "antero-posteriore", "dorsoventral").
const FRONTAL_STEMS: &[(&str, &str)] = &[
    ("POSTERO", "ANTERI"),
    ("ANTERO", "POSTERI"),
    ("DORSO", "VENTRAL"),
    ("VENTRO", "DORSAL"),
    ("TYLNO", "PRZEDNI"),
    ("PRZEDNIO", "TYLN"),
];

/// The abbreviations in two letters: "p.a.", "P/A", "a. p.", "d.v."
/// (German dorso-ventral).
const FRONTAL_PAIRS: &[(&str, &str)] = &[("P", "A"), ("A", "P"), ("D", "V"), ("V", "D")];

/// `word` upper case without its accents (É is E, Ó is O, Ñ is N, ...),
/// as descriptions write the same word both ways.
fn unaccented(word: &str) -> String {
    word.chars()
        .map(|c| match c {
            'Á' | 'À' | 'Â' | 'Ä' | 'Ã' | 'Ą' => 'A',
            'É' | 'È' | 'Ê' | 'Ë' | 'Ę' => 'E',
            'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
            'Ó' | 'Ò' | 'Ô' | 'Ö' | 'Õ' => 'O',
            'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
            'Ç' => 'C',
            'Ñ' => 'N',
            other => other,
        })
        .collect()
}

/// The word of `text` that names a lateral view, if any, and whether it
/// names a frontal one.
fn views_named(text: &str) -> (Option<String>, bool) {
    let all: Vec<String> = words(text).map(|w| unaccented(&w)).collect();
    let lateral = all
        .iter()
        .find(|w| LATERAL_WORDS.contains(&w.as_str()))
        .cloned();
    let stem = |w: &str| {
        FRONTAL_STEMS
            .iter()
            .any(|(first, second)| w.starts_with(first) && w[first.len()..].starts_with(second))
    };
    let stems = |a: &str, b: &str| {
        FRONTAL_STEMS
            .iter()
            .any(|(first, second)| a.starts_with(first) && b.starts_with(second))
    };
    let frontal = all
        .iter()
        .any(|w| FRONTAL_WORDS.contains(&w.as_str()) || stem(w))
        || all.windows(2).any(|w| {
            FRONTAL_PAIRS.contains(&(w[0].as_str(), w[1].as_str())) || stems(&w[0], &w[1])
        });
    (lateral, frontal)
}

/// The descriptions read for the view, the most particular to one image
/// first: a series holds one view more often than a protocol does. Not
/// the Study Description: it names the whole examination, and its two
/// views written in words not listed here ("frente y perfil") read as a
/// lateral only and skipped every frontal image of the study.
const VIEW_DESCRIPTIONS: [&str; 3] = [
    "Series Description",
    "Acquisition Device Processing Description",
    "Protocol Name",
];

/// "LATERAL (Series Description word "LAT")" when the first of the
/// image's descriptions (in `VIEW_DESCRIPTIONS`' order) that names one
/// view only names a lateral; None when it names a frontal one, or none
/// names one view only (a "PA + LAT" series tells nothing of one image's
/// view). `descriptions` are (attribute name, value). A missed report is
/// worse than a lateral analysed: unknown words leave the image analysed.
pub(crate) fn lateral_in_descriptions<'a>(
    descriptions: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Option<String> {
    for name in VIEW_DESCRIPTIONS {
        for (attribute, text) in descriptions.clone() {
            if attribute != name {
                continue;
            }
            match views_named(text) {
                (Some(word), false) => {
                    return Some(format!("LATERAL ({attribute} word \"{word}\")"))
                }
                (None, true) => return None,
                _ => {}
            }
        }
    }
    None
}

/// Whether Patient Orientation has a left-right main direction: a frontal
/// projection (or a shallow oblique), which a description does not
/// overrule.
pub(crate) fn frontal_orientation(orientation: &str) -> bool {
    orientation
        .split('\\')
        .filter_map(|d| d.trim().chars().next())
        .any(|c| matches!(c.to_ascii_uppercase(), 'L' | 'R'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_matched_as_words() {
        assert!(names_term("CHEST", "chest"));
        assert!(names_term("CHEST PA", "CHEST"));
        assert!(names_term("chest_pa", "CHEST"));
        assert!(!names_term("CHESTWALL", "CHEST"));
        assert!(!names_term("LEG", "CHEST"));
        assert!(names_term("CHEST PA", "CHEST PA"));
        assert!(names_term("LUNGS", "LUNG"));
    }

    #[test]
    fn descriptions_name_another_body_part_only_without_the_chest() {
        let leg = [("Series Description", "Long Leg Stitched")];
        assert_eq!(
            body_part_in_descriptions(leg).as_deref(),
            Some("LEG (Series Description word \"LEG\")")
        );
        let knee = [("Study Description", "RX KNIE re."), ("Protocol Name", "")];
        assert_eq!(
            body_part_in_descriptions(knee).as_deref(),
            Some("LEG (Study Description word \"KNIE\")")
        );
        // the chest named anywhere: no evidence against a chest image
        let both = [
            ("Study Description", "Chest and ribs"),
            ("Series Description", "Ribs"),
        ];
        assert_eq!(body_part_in_descriptions(both), None);
        assert_eq!(
            body_part_in_descriptions([("Series Description", "Thorax lat")]),
            None
        );
        assert_eq!(
            body_part_in_descriptions([("Series Description", "PA 1")]),
            None
        );
        assert_eq!(body_part_in_descriptions(Vec::<(&str, &str)>::new()), None);
        // a word inside another is not it
        assert_eq!(
            body_part_in_descriptions([("Series Description", "Handheld")]),
            None
        );
        // chest radiographs described in French, or by their positioning
        for chest in [
            "Pulmonaire de face",
            "FACE DEBOUT",
            "AP semi-erect head up 45",
            "Trauma AP supine on spine board",
            "AP portable hand-held detector",
        ] {
            assert_eq!(
                body_part_in_descriptions([("Series Description", chest)]),
                None,
                "{chest}"
            );
        }
        for (other, term) in [
            ("AXR supine", "ABDOMEN"),
            ("Tib/Fib", "LEG"),
            ("RX RODILLA", "LEG"),
            ("Schädel", "SKULL"),
            ("HWS 2 Ebenen", "SPINE"),
            ("Rachis lombaire", "SPINE"),
            ("Hand PA", "HAND"),
        ] {
            let found = body_part_in_descriptions([("Series Description", other)]);
            assert!(
                found.as_deref().is_some_and(|f| f.starts_with(term)),
                "{other}: {found:?}"
            );
        }
    }

    #[test]
    fn an_antero_posterior_axis_without_a_left_right_one_is_lateral() {
        assert_eq!(
            lateral_from_orientation("P\\F").as_deref(),
            Some("LATERAL (Patient Orientation P\\F)")
        );
        assert!(lateral_from_orientation("A\\F").is_some());
        assert!(lateral_from_orientation("F\\P").is_some()); // rotated
        assert!(lateral_from_orientation("PH\\F").is_some());
        assert_eq!(lateral_from_orientation("L\\F"), None);
        assert_eq!(lateral_from_orientation("R\\F"), None);
        assert_eq!(lateral_from_orientation("RP\\F"), None); // oblique, frontal-ish
        assert_eq!(lateral_from_orientation("P"), None);
        assert_eq!(lateral_from_orientation(""), None);
    }
    #[test]
    fn descriptions_name_a_lateral_only_without_a_frontal_view() {
        let lateral = |d: &[(&'static str, &'static str)]| lateral_in_descriptions(d.to_vec());
        let series = |text: &'static str| lateral(&[("Series Description", text)]);
        assert_eq!(
            series("Thorax lat.").as_deref(),
            Some("LATERAL (Series Description word \"LAT\")")
        );
        assert!(lateral(&[("Protocol Name", "CHEST LAT")]).is_some());
        for text in [
            "Thorax seitlich",
            "Thorax seitlicher Strahlengang",
            "Thorax de profil",
            "Chest Rt Lat",
            "Thorax lateraal",
            "RTG klatki piersiowej boczne",
            "Tórax lateral izquierdo",
            "Thorax zij",
            "X-thorax zijaanzicht",
            "RTG klatki piersiowej w projekcji bocznej",
            "Lungor sidobild",
        ] {
            assert!(series(text).is_some(), "{text}");
        }
        // two views named, a frontal one (in one word or two), a
        // decubitus, nothing
        for text in [
            "Thorax PA + LAT",
            "Thorax p.a. + seitl.",
            "Thorax p. a. und seitlich",
            "Thorax d.v. und seitlich",
            "Thorax v.d. + seitlich",
            "CHEST POSTEROANTERIOR AND LATERAL",
            "Thorax postero-anterior + lateral",
            "Torax posteroanterior y lateral",
            "CHEST P/A AND LATERAL",
            "CHEST P-A & LAT",
            "Chest lateral decubitus",
            "CHEST LT LAT DEC",
            "Tórax en decúbito lateral",
            "Torace in decubito laterale",
            "Tórax frente y perfil",
            "Thorax sagittal + seitlich",
            "Thorax 2 Eb. (sag. + seitl.)",
            "CXR 2 VIEW (FRONT & LAT)",
            "XR CHEST UPRIGHT AND LATERAL",
            "Chest erect + lateral",
            "Chest supine and lateral",
            "Thorax postéro-antérieur et profil",
            "Rx torace postero-anteriore e laterale",
            "Tórax póstero-anterior e perfil",
            "Torace antero-posteriore e latero-laterale",
            "Zdjęcie klatki piersiowej tylno-przednie i boczne",
            "Thorax PA en zij",
            "Akciğer PA ve yan",
            "Thorax Yan Wei",
            "Thorax RL",
            "Thorax LL",
            "Thorax p.a.",
            "Lateralität",
            "Chest",
        ] {
            assert_eq!(series(text), None, "{text}");
        }
        // the most particular description naming one view decides
        let series_lateral = [
            ("Study Description", "Thorax PA und seitlich"),
            ("Protocol Name", "CHEST PA/LAT"),
            ("Series Description", "Thorax seitl."),
        ];
        assert!(lateral(&series_lateral).is_some());
        let series_frontal = [
            ("Study Description", "Chest lateral"),
            ("Series Description", "Chest PA"),
        ];
        assert_eq!(lateral(&series_frontal), None);
        let series_both_processing_lateral = [
            ("Series Description", "Thorax p.a. + seitl."),
            ("Acquisition Device Processing Description", "THORAX LAT"),
        ];
        assert!(lateral(&series_both_processing_lateral).is_some());
        let frontal_study_both = [
            ("Study Description", "Thorax p.a. und seitlich"),
            ("Series Description", "Thorax p.a."),
        ];
        assert_eq!(lateral(&frontal_study_both), None);
        // the study's description names the examination, not the image
        let only_study = [
            ("Study Description", "Chest lateral"),
            ("Series Description", "Chest"),
        ];
        assert_eq!(lateral(&only_study), None);
    }

    #[test]
    fn an_orientation_with_a_left_right_axis_is_frontal() {
        assert!(frontal_orientation("L\\F"));
        assert!(frontal_orientation("RP\\F"));
        assert!(!frontal_orientation("P\\F"));
        assert!(!frontal_orientation(""));
    }
}
