//! Anatomy and view from what a header says in words and orientation, for
//! routing when neither the attribute nor its code names them. Body Part
//! Examined is Type 3 in CR and often left out; View Position is Type 2
//! and often empty. A stitched long-leg image with neither got a chest
//! result; a lateral chest with an empty View Position was analysed as a
//! frontal one, though its Patient Orientation said lateral.

/// Words of a description that name the chest: any of them and the
/// descriptions are no evidence against a chest image.
const CHEST_WORDS: &[&str] = &[
    "CHEST", "THORAX", "THORAKS", "TORAX", "TÓRAX", "TORACE", "LUNG", "LUNGS", "LUNGE", "POUMON",
    "POUMONS", "CXR",
];

/// Words of a description that name another body part (PS3.16 Annex L
/// terms and their common forms), with the term they stand for.
const OTHER_PARTS: &[(&str, &[&str])] = &[
    ("ABDOMEN", &["ABDOMEN", "ABD", "KUB", "BAUCH"]),
    ("PELVIS", &["PELVIS", "BECKEN"]),
    ("HIP", &["HIP", "HIPS"]),
    (
        "LEG",
        &[
            "LEG", "LEGS", "FEMUR", "TIBIA", "FIBULA", "KNEE", "KNEES", "KNIE",
        ],
    ),
    ("ANKLE", &["ANKLE", "ANKLES"]),
    (
        "FOOT",
        &["FOOT", "FEET", "TOE", "TOES", "HEEL", "CALCANEUS"],
    ),
    ("HAND", &["HAND", "HANDS", "FINGER", "FINGERS", "THUMB"]),
    ("WRIST", &["WRIST", "WRISTS"]),
    ("ARM", &["ARM", "FOREARM", "ELBOW", "HUMERUS"]),
    (
        "SHOULDER",
        &["SHOULDER", "SHOULDERS", "CLAVICLE", "SCAPULA"],
    ),
    ("RIB", &["RIB", "RIBS", "STERNUM"]),
    (
        "SKULL",
        &[
            "SKULL", "HEAD", "FACE", "SINUS", "SINUSES", "MANDIBLE", "JAW", "ORBIT", "ORBITS",
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
            "CERVICAL",
            "SACRUM",
            "COCCYX",
            "SCOLIOSIS",
        ],
    ),
    ("EXTREMITY", &["EXTREMITY", "EXTREMITIES", "LIMB"]),
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
    value.trim().eq_ignore_ascii_case(term) || words(value).any(|w| w.eq_ignore_ascii_case(term))
}

/// The body part another than the chest that the descriptions name, as
/// "LEG (Series Description "Long Leg Stitched")"; None when one of them
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
        words(text).find_map(|w| {
            OTHER_PARTS
                .iter()
                .find(|(_, forms)| forms.contains(&w.as_str()))
                .map(|(term, _)| format!("{term} ({attribute} \"{}\")", text.trim()))
        })
    })
}

/// "LATERAL (Patient Orientation P\F)" when Patient Orientation says the
/// image's axes are antero-posterior and head-feet (a lateral projection:
/// a frontal one has a left-right axis); None otherwise.
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
    }

    #[test]
    fn descriptions_name_another_body_part_only_without_the_chest() {
        let leg = [("Series Description", "Long Leg Stitched")];
        assert_eq!(
            body_part_in_descriptions(leg).as_deref(),
            Some("LEG (Series Description \"Long Leg Stitched\")")
        );
        let knee = [("Study Description", "RX KNIE re."), ("Protocol Name", "")];
        assert_eq!(
            body_part_in_descriptions(knee).as_deref(),
            Some("LEG (Study Description \"RX KNIE re.\")")
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
}
