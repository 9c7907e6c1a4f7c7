//! Routing: which received instances are analysed, which are forwarded as
//! received and to which destinations, and where results go.

use pneumo_store::InstanceHeader;
use serde::Deserialize;

/// A remote AE the node sends to.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The name routing rules and the outbox use.
    pub name: String,
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Whether results (SRs) go here when neither `routing.results_to` nor
    /// `[[routing.results]]` rules are set.
    #[serde(default)]
    pub results: bool,
}

impl Destination {
    pub fn address(&self) -> pneumo_dimse::AeAddress {
        pneumo_dimse::AeAddress {
            ae_title: self.ae_title.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// Forward the instances a rule matches to its destinations. Every
/// condition must hold; an empty list matches any value.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardRule {
    pub destinations: Vec<String>,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
    pub calling_ae_titles: Vec<String>,
}

/// Send the results of images received from these callers (any caller when
/// empty) to these destinations: several sites' PACSs sending to one node
/// each get their own patients' results back, not the others'.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsRule {
    pub destinations: Vec<String>,
    pub calling_ae_titles: Vec<String>,
}

/// Where the results of an analysed image go, by the AE title that sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultRouting {
    /// Without rules: every image's results go here.
    everyone: Vec<String>,
    rules: Vec<ResultsRule>,
}

impl ResultRouting {
    /// The destinations of the results of an image these callers sent
    /// (each caller that sent it), each once.
    pub fn destinations_for(&self, callers: &[String]) -> Vec<String> {
        if self.rules.is_empty() {
            return self.everyone.clone();
        }
        union_of(self.rules.iter().filter_map(|rule| {
            callers
                .iter()
                .any(|c| caller_matches(&rule.calling_ae_titles, c))
                .then_some(&rule.destinations)
        }))
    }
}

/// Whether a rule's `calling_ae_titles` (any caller when empty) names
/// `calling_ae`: exactly, case included, leading and trailing spaces not
/// counting (PS3.5 6.2: they are not significant in an AE title).
fn caller_matches(titles: &[String], calling_ae: &str) -> bool {
    titles.is_empty() || titles.iter().any(|a| a.trim() == calling_ae.trim())
}

/// Each name of these lists once, in order.
fn union_of<'a>(lists: impl Iterator<Item = &'a Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in lists.flatten() {
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Each rule (`section[i]`) names at least one destination, all configured.
fn rules_name_known_destinations<'a>(
    section: &str,
    rules: impl Iterator<Item = &'a Vec<String>>,
    destinations: &[Destination],
) -> Result<(), String> {
    for (i, names) in rules.enumerate() {
        if names.is_empty() {
            return Err(format!("{section}[{i}] names no destination"));
        }
        if let Some(n) = names
            .iter()
            .find(|n| !destinations.iter().any(|d| &d.name == *n))
        {
            return Err(format!("{section}[{i}] names unknown destination `{n}`"));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    pub analyse_modalities: Vec<String>,
    pub analyse_body_parts: Vec<String>,
    pub analyse_when_body_part_absent: bool,
    pub analyse_view_positions: Vec<String>,
    pub analyse_when_view_position_absent: bool,
    /// Also analyse DX "For Processing" images (raw detector data, not meant
    /// for display; the model was trained on images for presentation).
    pub analyse_for_processing: bool,
    /// Images of patients younger than this (in years, at the study) are
    /// not analysed: the model reads adult workers' radiographs. 0: any
    /// age. An image that gives no age is analysed.
    pub analyse_min_age_years: u32,
    pub forward: Vec<ForwardRule>,
    /// Destination names for results; empty: every destination with `results = true`.
    pub results_to: Vec<String>,
    /// Results routed by the image's caller; when set, they alone decide.
    pub results: Vec<ResultsRule>,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            analyse_modalities: vec!["CR".into(), "DX".into()],
            // CHEST is the defined term (PS3.16 Annex L); THORAX is what
            // many European modalities write, TORAX Spanish and Portuguese
            // ones, LUNG what some others do.
            analyse_body_parts: vec![
                "CHEST".into(),
                "THORAX".into(),
                "TORAX".into(),
                "LUNG".into(),
            ],
            analyse_when_body_part_absent: true,
            analyse_view_positions: vec!["PA".into(), "AP".into()],
            analyse_when_view_position_absent: true,
            analyse_for_processing: false,
            // Occupational lung disease: workers, not children.
            analyse_min_age_years: 16,
            forward: Vec::new(),
            results_to: Vec::new(),
            results: Vec::new(),
        }
    }
}

/// Digital X-Ray Image Storage - For Processing.
const DX_FOR_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.1.1.1";

/// Case-insensitive match of an optional value against a list (empty: any).
fn matches(list: &[String], value: Option<&str>, when_absent: bool) -> bool {
    if list.is_empty() {
        return true;
    }
    match value {
        None => when_absent,
        Some(v) => list.iter().any(|x| x.eq_ignore_ascii_case(v.trim())),
    }
}

/// A body part against the rule's terms: a term matches the value or one
/// of its words ("CHEST PA", "CHEST_PA" are CHEST), case ignored.
fn matches_body_part(list: &[String], value: Option<&str>, when_absent: bool) -> bool {
    if list.is_empty() {
        return true;
    }
    match value {
        None => when_absent,
        Some(v) => list.iter().any(|term| pneumo_store::names_term(v, term)),
    }
}

impl RoutingSection {
    /// Why an instance is not analysed, or `None` when it is.
    /// Whether images of this modality are analysed (when the rest allows).
    pub fn analyses_modality(&self, modality: Option<&str>) -> bool {
        matches(&self.analyse_modalities, modality, false)
    }

    pub fn analysis_refusal(&self, h: &InstanceHeader) -> Option<String> {
        // A report or companion image a node made: a PACS that sends
        // everything back made the node analyse its own companion image,
        // and with a PACS giving it a new UID each time, loop.
        if h.made_by_the_product() {
            return Some(format!(
                "an instance made by {} (a report or companion image sent back to it) is not \
                 analysed",
                pneumo_report::PRODUCT
            ));
        }
        if !self.analyse_for_processing && h.sop_class_uid == DX_FOR_PROCESSING {
            return Some(
                "DX For Processing image (raw detector data, not meant for display) is not analysed"
                    .into(),
            );
        }
        if !self.analyse_for_processing
            && h.presentation_intent_type.as_deref() == Some("FOR PROCESSING")
        {
            return Some(
                "Presentation Intent Type FOR PROCESSING (raw detector data, not meant for \
                 display) is not analysed"
                    .into(),
            );
        }
        if !self.analyses_modality(h.modality.as_deref()) {
            return Some(format!(
                "modality {} is not analysed",
                h.modality.as_deref().unwrap_or("(absent)")
            ));
        }
        if let Some(conversion) = h
            .conversion_type
            .as_deref()
            // (one value; several, which the VR does not allow, count if any is)
            .filter(|c| c.split('\\').any(|v| NOT_RADIOGRAPHS.contains(&v.trim())))
        {
            return Some(format!(
                "a Secondary Capture of Conversion Type {conversion} (a workstation's capture, a \
                 drawing, a synthetic image or a scanned document: annotated or derived, not a \
                 radiograph) is not analysed"
            ));
        }
        if let Some(image_type) = h.image_type.as_deref().filter(|t| {
            t.split('\\')
                .any(|v| v.trim().eq_ignore_ascii_case("STITCHED"))
        }) {
            return Some(format!(
                "a stitched image (Image Type {image_type}) is not analysed: a chest radiograph \
                 is one exposure"
            ));
        }
        if !matches_body_part(
            &self.analyse_body_parts,
            h.body_part_examined.as_deref(),
            self.analyse_when_body_part_absent,
        ) {
            return Some(format!(
                "body part {} is not analysed",
                h.body_part_examined.as_deref().unwrap_or("(absent)")
            ));
        }
        if !matches(
            &self.analyse_view_positions,
            h.view_position.as_deref(),
            self.analyse_when_view_position_absent,
        ) {
            return Some(format!(
                "view position {} is not analysed",
                h.view_position.as_deref().unwrap_or("(absent)")
            ));
        }
        if let Some(age) = h
            .patient_age_years
            .filter(|age| *age < f64::from(self.analyse_min_age_years))
        {
            return Some(format!(
                "patient age {} is under routing.analyse_min_age_years ({}): the model reads \
                 adults' radiographs",
                spoken_age(age),
                self.analyse_min_age_years
            ));
        }
        None
    }

    /// The destinations a received instance is forwarded to, each once.
    pub fn forward_destinations(&self, h: &InstanceHeader, calling_ae: &str) -> Vec<String> {
        // Not an original: results go by the results rules alone.
        if h.made_by_the_product() {
            return Vec::new();
        }
        union_of(self.forward.iter().filter_map(|rule| {
            let hit = matches(&rule.modalities, h.modality.as_deref(), false)
                && (rule.sop_classes.is_empty()
                    || rule.sop_classes.iter().any(|c| c == &h.sop_class_uid))
                && caller_matches(&rule.calling_ae_titles, calling_ae);
            hit.then_some(&rule.destinations)
        }))
    }

    /// Where results go: by the `[[routing.results]]` rules when there are
    /// any, else to `results_to`, else to every destination marked `results`.
    pub fn result_routing(&self, destinations: &[Destination]) -> ResultRouting {
        let everyone = if self.results_to.is_empty() {
            destinations
                .iter()
                .filter(|d| d.results)
                .map(|d| d.name.clone())
                .collect()
        } else {
            self.results_to.clone()
        };
        ResultRouting {
            everyone,
            rules: self.results.clone(),
        }
    }

    /// Every destination a rule names must be configured.
    pub fn validate(&self, destinations: &[Destination]) -> Result<(), String> {
        let known = |n: &String| destinations.iter().any(|d| &d.name == n);
        // An empty term matches no value: a rule holding one would match
        // less than it says, or nothing.
        let terms = self.forward.iter().enumerate().flat_map(|(i, r)| {
            [
                ("routing.forward", i, "modalities", &r.modalities),
                ("routing.forward", i, "sop_classes", &r.sop_classes),
                (
                    "routing.forward",
                    i,
                    "calling_ae_titles",
                    &r.calling_ae_titles,
                ),
            ]
        });
        let results = self.results.iter().enumerate();
        let terms = terms.chain(results.map(|(i, r)| {
            (
                "routing.results",
                i,
                "calling_ae_titles",
                &r.calling_ae_titles,
            )
        }));
        for (section, i, key, list) in terms {
            if list.iter().any(|t| t.trim().is_empty()) {
                return Err(format!(
                    "{section}[{i}].{key} has an empty term, which matches nothing: \
                     leave the key out to match any value"
                ));
            }
        }
        let forward = self.forward.iter().map(|r| &r.destinations);
        rules_name_known_destinations("routing.forward", forward, destinations)?;
        if let Some(n) = self.results_to.iter().find(|n| !known(n)) {
            return Err(format!(
                "routing.results_to names unknown destination `{n}`"
            ));
        }
        let results = self.results.iter().map(|r| &r.destinations);
        rules_name_known_destinations("routing.results", results, destinations)?;
        // Two ways of saying where results go would leave one ignored.
        if !self.results.is_empty() {
            if !self.results_to.is_empty() {
                return Err(
                    "routing.results_to and [[routing.results]] rules are both set: \
                     the rules decide where results go; leave results_to out"
                        .into(),
                );
            }
            if let Some(d) = destinations.iter().find(|d| d.results) {
                return Err(format!(
                    "destination `{}` has results = true and [[routing.results]] rules are \
                     set: the rules decide where results go; leave results = true out",
                    d.name
                ));
            }
        }
        Ok(())
    }
}

/// An age in years as a person says it: completed years, or months, or
/// days under a month (rounding 15.99 up to "16.0 years" read as a
/// contradiction of the minimum it was under).
fn spoken_age(years: f64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if years >= 1.0 {
        plural(years.floor() as u64, "year")
    } else if years >= 1.0 / 12.0 {
        plural((years * 12.0).floor() as u64, "month")
    } else {
        plural((years * 365.25).floor() as u64, "day")
    }
}

/// Conversion Types (0008,0064) of Secondary Captures that are no
/// radiograph: a workstation's capture (another vendor's annotated
/// overlay, sent with Modality CR, got a chest result), a drawing, a
/// synthetic image, a scanned document. A digitised film (DF), a digital
/// interface's (DI), video (DV) or scanned image (SI) may be analysed.
const NOT_RADIOGRAPHS: [&str; 4] = ["WSD", "DRW", "SYN", "SD"];
#[cfg(test)]
mod tests {
    use super::*;

    fn header(modality: Option<&str>, body: Option<&str>, view: Option<&str>) -> InstanceHeader {
        InstanceHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: "1.2.3".into(),
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.4".into(),
            modality: modality.map(Into::into),
            body_part_examined: body.map(Into::into),
            view_position: view.map(Into::into),
            accession_number: None,
            patient_age_years: None,
            image_type: None,
            presentation_intent_type: None,
            conversion_type: None,
            manufacturer_model_name: None,
        }
    }

    #[test]
    fn analysis_rule_modality() {
        let r = RoutingSection::default();
        assert_eq!(r.analysis_refusal(&header(Some("CR"), None, None)), None);
        assert_eq!(r.analysis_refusal(&header(Some("dx"), None, None)), None);
        assert!(r
            .analysis_refusal(&header(Some("MR"), None, None))
            .unwrap()
            .contains("modality MR"));
        assert!(r.analysis_refusal(&header(None, None, None)).is_some());
    }

    #[test]
    fn dx_for_processing_is_not_analysed_unless_asked() {
        let mut r = RoutingSection::default();
        let mut h = header(Some("DX"), Some("CHEST"), Some("PA"));
        h.sop_class_uid = DX_FOR_PROCESSING.into();
        assert!(r.analysis_refusal(&h).unwrap().contains("For Processing"));
        r.analyse_for_processing = true;
        assert_eq!(r.analysis_refusal(&h), None);
        h.sop_class_uid = "1.2.840.10008.5.1.4.1.1.1.1".into(); // For Presentation
        r.analyse_for_processing = false;
        assert_eq!(r.analysis_refusal(&h), None);
        // the class says presentation, the Type 1 attribute says raw data
        h.presentation_intent_type = Some("FOR PROCESSING".into());
        assert!(r
            .analysis_refusal(&h)
            .unwrap()
            .contains("Presentation Intent Type FOR PROCESSING"));
        r.analyse_for_processing = true;
        assert_eq!(r.analysis_refusal(&h), None);
    }

    #[test]
    fn a_workstation_s_capture_is_not_analysed_a_digitised_film_is() {
        let r = RoutingSection::default();
        let mut h = header(Some("CR"), Some("CHEST"), Some("PA"));
        h.sop_class_uid = "1.2.840.10008.5.1.4.1.1.7".into();
        for conversion in ["WSD", "SYN", "DRW", "SD", "WSD\\DF"] {
            h.conversion_type = Some(conversion.into());
            let refusal = r.analysis_refusal(&h).unwrap();
            assert!(
                refusal.contains(&format!("Conversion Type {conversion}")),
                "{refusal}"
            );
        }
        for conversion in ["DF", "DI"] {
            h.conversion_type = Some(conversion.into());
            assert_eq!(r.analysis_refusal(&h), None);
        }
    }

    #[test]
    fn what_a_node_made_is_neither_analysed_nor_forwarded() {
        let mut r = RoutingSection::default();
        r.analyse_modalities.push("OT".into());
        r.forward = vec![ForwardRule {
            destinations: vec!["teaching".into()],
            ..Default::default()
        }];
        let mut h = header(Some("OT"), Some("CHEST"), None);
        assert_eq!(r.analysis_refusal(&h), None);
        assert_eq!(r.forward_destinations(&h, "PACS"), vec!["teaching"]);
        h.manufacturer_model_name = Some(pneumo_report::PRODUCT.into());
        assert!(r
            .analysis_refusal(&h)
            .unwrap()
            .contains("made by pneumo-node"));
        assert!(r.forward_destinations(&h, "PACS").is_empty());
        // as a PACS may have rewritten it
        for rewritten in ["PNEUMO-NODE", "pneumo-node 0.1.0"] {
            h.manufacturer_model_name = Some(rewritten.into());
            assert!(r.analysis_refusal(&h).is_some(), "{rewritten}");
        }
    }

    #[test]
    fn stitched_images_are_not_analysed() {
        let r = RoutingSection::default();
        let mut h = header(Some("DX"), None, Some("AP"));
        h.image_type = Some("DERIVED\\PRIMARY\\STITCHED".into());
        assert!(r.analysis_refusal(&h).unwrap().contains("stitched"));
        h.image_type = Some("ORIGINAL\\PRIMARY".into());
        assert_eq!(r.analysis_refusal(&h), None);
    }

    #[test]
    fn analysis_rule_body_part() {
        let mut r = RoutingSection::default();
        for chest in ["CHEST", "THORAX", "lung", "TORAX", "CHEST PA", "chest_pa"] {
            assert_eq!(
                r.analysis_refusal(&header(Some("CR"), Some(chest), None)),
                None
            );
        }
        assert!(r
            .analysis_refusal(&header(Some("CR"), Some("HAND"), None))
            .unwrap()
            .contains("body part HAND"));
        r.analyse_when_body_part_absent = false;
        assert!(r
            .analysis_refusal(&header(Some("CR"), None, None))
            .is_some());
    }

    #[test]
    fn analysis_rule_age() {
        let mut r = RoutingSection::default();
        let mut h = header(Some("CR"), Some("CHEST"), Some("PA"));
        h.patient_age_years = Some(4.5);
        let why = r.analysis_refusal(&h).unwrap();
        assert!(why.contains("patient age 4 years is under"), "{why}");
        h.patient_age_years = Some(15.999);
        let why = r.analysis_refusal(&h).unwrap();
        assert!(why.contains("patient age 15 years is under"), "{why}");
        assert_eq!(spoken_age(1.0), "1 year");
        assert_eq!(spoken_age(0.5), "6 months");
        assert_eq!(spoken_age(10.0 / 365.25), "10 days");
        for adult in [Some(16.0), Some(45.0), None] {
            h.patient_age_years = adult;
            assert_eq!(r.analysis_refusal(&h), None, "{adult:?}");
        }
        r.analyse_min_age_years = 0;
        h.patient_age_years = Some(0.1);
        assert_eq!(r.analysis_refusal(&h), None);
    }

    #[test]
    fn analysis_rule_view_position() {
        let mut r = RoutingSection::default();
        assert_eq!(
            r.analysis_refusal(&header(Some("CR"), None, Some("PA"))),
            None
        );
        assert_eq!(
            r.analysis_refusal(&header(Some("CR"), None, Some("AP"))),
            None
        );
        assert!(r
            .analysis_refusal(&header(Some("CR"), None, Some("LL")))
            .unwrap()
            .contains("view position LL"));
        r.analyse_view_positions.clear();
        assert_eq!(
            r.analysis_refusal(&header(Some("CR"), None, Some("LL"))),
            None
        );
    }

    #[test]
    fn forward_rules_by_modality_sop_class_and_caller() {
        let r = RoutingSection {
            forward: vec![
                ForwardRule {
                    destinations: vec!["pacs".into()],
                    modalities: vec!["CR".into()],
                    ..Default::default()
                },
                ForwardRule {
                    destinations: vec!["archive".into(), "pacs".into()],
                    sop_classes: vec!["1.2.840.10008.5.1.4.1.1.4".into()],
                    ..Default::default()
                },
                ForwardRule {
                    destinations: vec!["teaching".into()],
                    calling_ae_titles: vec!["ROOM7".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            r.forward_destinations(&header(Some("CR"), None, None), "X"),
            vec!["pacs"]
        );
        let mut mr = header(Some("MR"), None, None);
        mr.sop_class_uid = "1.2.840.10008.5.1.4.1.1.4".into();
        assert_eq!(r.forward_destinations(&mr, "X"), vec!["archive", "pacs"]);
        assert_eq!(
            r.forward_destinations(&header(Some("CT"), None, None), "ROOM7"),
            vec!["teaching"]
        );
        assert!(r
            .forward_destinations(&header(Some("CT"), None, None), "X")
            .is_empty());
        assert!(RoutingSection::default()
            .forward_destinations(&header(Some("CR"), None, None), "X")
            .is_empty());
    }

    fn d(name: &str, results: bool) -> Destination {
        Destination {
            name: name.into(),
            ae_title: "A".into(),
            host: "h".into(),
            port: 1,
            results,
        }
    }

    #[test]
    fn results_go_to_marked_destinations_unless_named() {
        let dests = [d("pacs", true), d("archive", false)];
        let mut r = RoutingSection::default();
        assert_eq!(
            r.result_routing(&dests)
                .destinations_for(&["CR1".to_string()]),
            vec!["pacs"]
        );
        r.results_to = vec!["archive".into()];
        assert_eq!(
            r.result_routing(&dests)
                .destinations_for(&["CR1".to_string()]),
            vec!["archive"]
        );
        assert!(r.validate(&dests).is_ok());
        r.results_to = vec!["nowhere".into()];
        assert!(r.validate(&dests).unwrap_err().contains("nowhere"));
    }

    #[test]
    fn results_rules_route_by_caller_and_alone() {
        let rule = |dests: &[&str], callers: &[&str]| ResultsRule {
            destinations: dests.iter().map(|s| s.to_string()).collect(),
            calling_ae_titles: callers.iter().map(|s| s.to_string()).collect(),
        };
        let mut dests = vec![d("pacs_a", false), d("pacs_b", false), d("audit", false)];
        let mut r = RoutingSection {
            results: vec![
                rule(&["pacs_a"], &["SITE_A"]),
                rule(&["pacs_b"], &["SITE_B", "SITE_B2"]),
                rule(&["audit", "pacs_a"], &[]),
            ],
            ..RoutingSection::default()
        };
        assert!(r.validate(&dests).is_ok());
        let routing = r.result_routing(&dests);
        assert_eq!(
            routing.destinations_for(&["SITE_A".to_string()]),
            vec!["pacs_a", "audit"]
        );
        assert_eq!(
            routing.destinations_for(&["SITE_B2".to_string()]),
            vec!["pacs_b", "audit", "pacs_a"]
        );
        assert_eq!(
            routing.destinations_for(&["OTHER".to_string()]),
            vec!["audit", "pacs_a"]
        );
        // Spaces around a title do not count (a rule written "SITE_B ").
        let spaced = RoutingSection {
            results: vec![rule(&["pacs_b"], &[" SITE_B "])],
            ..RoutingSection::default()
        };
        assert_eq!(
            spaced
                .result_routing(&dests)
                .destinations_for(&["SITE_B".to_string()]),
            vec!["pacs_b"]
        );

        r.results.push(rule(&["nowhere"], &[]));
        assert!(r
            .validate(&dests)
            .unwrap_err()
            .contains("routing.results[3]"));
        r.results.pop();
        r.results.push(rule(&[], &["X"]));
        assert!(r
            .validate(&dests)
            .unwrap_err()
            .contains("names no destination"));
        r.results.pop();
        r.results_to = vec!["audit".into()];
        assert!(r.validate(&dests).unwrap_err().contains("results_to"));
        r.results_to.clear();
        dests[0].results = true;
        assert!(r
            .validate(&dests)
            .unwrap_err()
            .contains("`pacs_a` has results = true"));
    }
}
