//! The node's configuration: embedded defaults, then an optional TOML file,
//! then `PNEUMO__SECTION__KEY` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pneumo_dimse::{AllowedCaller, ScpConfig, StorageAcceptance};
use serde::Deserialize;

use crate::outbox::OutboxSection;
use crate::pipeline::PipelineSection;
use crate::reportcfg::ReportSection;
use crate::retention::RetentionSection;
use crate::routing::{Destination, RoutingSection};

#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub dicom: DicomSection,
    pub http: HttpSection,
    pub database: DatabaseSection,
    pub log: LogSection,
    pub destinations: Vec<Destination>,
    pub routing: RoutingSection,
    pub outbox: OutboxSection,
    pub inference: pneumo_inference::InferenceSettings,
    pub report: ReportSection,
    pub pipeline: PipelineSection,
    pub retention: RetentionSection,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Instances, spool and the SQLite database live here.
    pub data_dir: PathBuf,
    /// Below this much free space on the data directory, C-STOREs get A700.
    pub min_free_mb: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            data_dir: PathBuf::from("./var"),
            min_free_mb: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub enabled: bool,
    pub bind: IpAddr,
    pub port: u16,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Accept {
    #[default]
    Chest,
    AllStorage,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomSection {
    pub ae_title: String,
    pub bind: IpAddr,
    pub port: u16,
    pub require_called_ae: bool,
    pub accept: Accept,
    /// SOP Class UIDs accepted besides `accept`'s: a vendor's private
    /// storage classes (refused, one failed a PACS's whole send of a study).
    pub also_accept: Vec<String>,
    pub max_pdu: u32,
    pub max_associations: usize,
    pub read_timeout_s: u64,
    pub idle_timeout_s: u64,
    /// Slowest average rate a message may arrive at once begun, KiB/s
    /// (0: no bound).
    pub min_receive_rate_kib_s: u64,
    /// On SIGTERM, how long transfers in progress may take to finish.
    pub shutdown_grace_s: u64,
    /// Answer Storage Commitment (push model) requests.
    pub storage_commitment: bool,
    pub allowed_callers: Vec<AllowedCallerEntry>,
    /// Storage Commitment requesters that take the result on an
    /// association of their own, which the node opens to them.
    pub commitment_requesters: Vec<CommitmentRequester>,
}

impl Default for DicomSection {
    fn default() -> Self {
        DicomSection {
            ae_title: "PNEUMO".into(),
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 11112,
            require_called_ae: true,
            accept: Accept::Chest,
            also_accept: Vec::new(),
            max_pdu: 1 << 20,
            max_associations: 32,
            read_timeout_s: 30,
            idle_timeout_s: 120,
            min_receive_rate_kib_s: 16,
            shutdown_grace_s: 30,
            storage_commitment: true,
            allowed_callers: Vec::new(),
            commitment_requesters: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommitmentRequester {
    /// The calling AE title its requests come from, and the called AE
    /// title of the association its results go on.
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl CommitmentRequester {
    pub fn address(&self) -> pneumo_dimse::AeAddress {
        pneumo_dimse::AeAddress {
            ae_title: self.ae_title.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedCallerEntry {
    pub ae_title: String,
    #[serde(default)]
    pub host: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// A `sqlite:` URL; empty means `<data_dir>/pneumo-node.sqlite`.
    pub url: String,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A tracing filter: `info`, `debug`, `pneumo_dimse=debug,info`...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The shortest `pipeline.lease_s`: shorter, an analysis still running (a
/// large image decoded on a busy machine) is taken again by another worker.
const MIN_LEASE_S: u64 = 30;

/// Keys whose value is a list of words, given comma-separated in a
/// `PNEUMO__…` variable.
const ENV_LIST_KEYS: [&str; 5] = [
    "dicom.also_accept",
    "routing.analyse_modalities",
    "routing.analyse_body_parts",
    "routing.analyse_view_positions",
    "routing.results_to",
];

impl Config {
    /// Loads the configuration: defaults, the file if given, the environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut builder = config::Config::builder();
        // Where the values came from, for the error: the file by its full
        // path (the node may run from another directory than the admin's
        // shell), and the environment when it set any.
        let mut origins = Vec::new();
        if let Some(path) = file {
            let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            if !path.is_file() {
                match std::fs::metadata(path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        bail!("configuration file {} does not exist", shown.display())
                    }
                    Err(e) => bail!("configuration file {} cannot be read: {e}", shown.display()),
                    Ok(m) if m.is_dir() => {
                        bail!("configuration file {} is a directory", shown.display())
                    }
                    Ok(_) => bail!(
                        "configuration file {} is not a regular file",
                        shown.display()
                    ),
                }
            }
            origins.push(shown.display().to_string());
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let mut environment = config::Environment::with_prefix("PNEUMO")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        // Lists of words may come from the environment, comma-separated
        // (`PNEUMO__ROUTING__ANALYSE_MODALITIES=CR,DX`); lists of tables
        // (destinations, forwarding rules, allowed callers) only from a file.
        for key in ENV_LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment);
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("PNEUMO__")) {
            origins.push("PNEUMO__ environment variables".into());
        }
        let invalid = if origins.is_empty() {
            "invalid configuration".to_string()
        } else {
            format!("invalid configuration ({})", origins.join(", "))
        };
        // The config crate ends a file's error with " in <the path relative
        // to the working directory>" ("../../srv/..."): the file is named
        // above by its full path.
        let file_name = file
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        let built = builder
            .build()
            .map_err(|e| {
                let message = e.to_string();
                match (message.rfind(" in "), &file_name) {
                    (Some(at), Some(name)) if message.trim_end().ends_with(name.as_str()) => {
                        anyhow::anyhow!(message[..at].to_string())
                    }
                    _ => anyhow::Error::new(e),
                }
            })
            .context(invalid.clone())?;
        // The same values read by serde through toml: its message for a bad
        // enum value lists the accepted ones (the config crate's does not),
        // and it refuses a number with a fraction for an integer key, which
        // the config crate rounds (max_batch = 1.5 became 2, 0.4 became 0).
        let strict_error = || {
            built
                .clone()
                .try_deserialize::<toml::Value>()
                .ok()
                .and_then(|plain| plain.try_into::<Config>().err())
                .map(|t| t.to_string().trim().replace('\n', " "))
        };
        let mut config: Config = match built.clone().try_deserialize() {
            Ok(c) => c,
            Err(e) => {
                return Err(match strict_error() {
                    Some(message) => anyhow::anyhow!(message),
                    None => anyhow::Error::new(e),
                }
                .context(invalid.clone()));
            }
        };
        if let Some(fraction) = strict_error().filter(|m| m.contains("floating point")) {
            return Err(anyhow::anyhow!(fraction).context(invalid.clone()));
        }
        // `PNEUMO__ROUTING__ANALYSE_MODALITIES=` (empty) is the empty list,
        // which accepts any value: it was [""], which accepted none; and
        // `CR, DX` is CR and DX (" DX" matched no modality).
        for list in [
            &mut config.routing.analyse_modalities,
            &mut config.routing.analyse_body_parts,
            &mut config.routing.analyse_view_positions,
            &mut config.routing.results_to,
        ] {
            list.retain(|v| !v.trim().is_empty());
            for v in list.iter_mut() {
                *v = v.trim().to_string();
            }
        }
        // A rule's terms, trimmed too: `modalities = ["CR "]` matched no
        // image (values are compared trimmed) and the rule forwarded
        // nothing, silently. An empty term is refused (validate).
        let forward = config.routing.forward.iter_mut().flat_map(|r| {
            [
                &mut r.destinations,
                &mut r.modalities,
                &mut r.sop_classes,
                &mut r.calling_ae_titles,
            ]
        });
        let results = config
            .routing
            .results
            .iter_mut()
            .flat_map(|r| [&mut r.destinations, &mut r.calling_ae_titles]);
        for v in forward.chain(results).flatten() {
            *v = v.trim().to_string();
        }
        // Leading and trailing spaces are not part of an AE title (PS3.5
        // 6.2), and the calling AE title is compared trimmed: "ORTHANC "
        // never matched, and its requests got no result on their own.
        for r in &mut config.dicom.commitment_requesters {
            r.ae_title = r.ae_title.trim_matches(' ').to_string();
        }
        // Destinations too, as rules naming them are trimmed: "pacs " was
        // taken, then a rule naming it refused as naming `pacs`.
        for d in &mut config.destinations {
            d.name = d.name.trim_matches(' ').to_string();
            d.ae_title = d.ae_title.trim_matches(' ').to_string();
        }
        config.validate().context(invalid)?;
        Ok(config)
    }

    /// The configuration as the node uses it, defaults filled in, as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("writing the configuration as TOML")
    }

    /// What the configuration allows but is most likely a mistake, said
    /// at each start and by `check-config`: an allowed caller that no
    /// `[[routing.results]]` rule names gets its images analysed and its
    /// reports sent nowhere (its jobs stay `reported`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.callers_without_results();
        warnings.extend(self.report_texts_changed());
        warnings.extend(self.routing_terms_that_match_nothing());
        warnings.extend(self.results_flags_overridden());
        if !self.dicom.storage_commitment && !self.dicom.commitment_requesters.is_empty() {
            warnings.push(
                "dicom.commitment_requesters is set but dicom.storage_commitment is false: no \
                 commitment request is taken, so none of them gets a result"
                    .into(),
            );
        }
        warnings
    }

    /// Destinations marked `results = true` that `routing.results_to`
    /// leaves out: the list decides, and they get no result.
    fn results_flags_overridden(&self) -> Vec<String> {
        let to = &self.routing.results_to;
        if to.is_empty() {
            return Vec::new();
        }
        self.destinations
            .iter()
            .filter(|d| d.results && !to.contains(&d.name))
            .map(|d| {
                format!(
                    "destination `{}` has results = true, but routing.results_to decides where \
                     results go and does not name it: it gets none",
                    d.name
                )
            })
            .collect()
    }

    fn callers_without_results(&self) -> Vec<String> {
        let results = &self.routing.results;
        if results.is_empty() || results.iter().any(|r| r.calling_ae_titles.is_empty()) {
            return Vec::new();
        }
        self.dicom
            .allowed_callers
            .iter()
            .filter(|c| {
                !results
                    .iter()
                    .any(|r| r.calling_ae_titles.contains(&c.ae_title))
            })
            .map(|c| {
                format!(
                    "allowed caller `{}` is named by no [[routing.results]] rule: the results \
                     of its images go to no destination",
                    c.ae_title
                )
            })
            .collect()
    }

    /// The report's names as the reports will carry them: longer than
    /// their attribute holds (cut), or with a backslash (a value
    /// delimiter, written as a space). Warned of, not refused: a
    /// configuration that started before must start after an upgrade.
    fn report_texts_changed(&self) -> Vec<String> {
        let r = &self.report;
        [
            ("report.manufacturer", &r.manufacturer, 64),
            ("report.institution_name", &r.institution_name, 64),
            ("report.department", &r.department, 64),
            ("report.station_name", &r.station_name, 16),
        ]
        .into_iter()
        .filter_map(|(key, value, max)| {
            let mut changes = Vec::new();
            if value.chars().count() > max {
                changes.push(format!(
                    "longer than the {max} characters its attribute holds: cut"
                ));
            }
            if value.contains('\\') {
                changes.push("a backslash separates values in DICOM: written as a space".into());
            }
            (!changes.is_empty()).then(|| format!("{key} {value:?}: {}", changes.join("; ")))
        })
        .collect()
    }

    /// Routing terms holding a separator (`PA;AP` set from the
    /// environment is one term, matching nothing: every image with a View
    /// Position was skipped without a word).
    fn routing_terms_that_match_nothing(&self) -> Vec<String> {
        let r = &self.routing;
        [
            ("routing.analyse_modalities", &r.analyse_modalities),
            ("routing.analyse_body_parts", &r.analyse_body_parts),
            ("routing.analyse_view_positions", &r.analyse_view_positions),
        ]
        .into_iter()
        .flat_map(|(key, terms)| {
            terms
                .iter()
                .filter(|t| t.contains([';', ',', '\\', '|', '/']))
                .map(move |t| {
                    format!(
                        "{key} term {t:?} holds a separator and matches no value: list each \
                         term on its own (in the environment: a comma-separated list)"
                    )
                })
        })
        .collect()
    }

    pub fn validate(&self) -> Result<()> {
        check_ae_title("dicom.ae_title", &self.dicom.ae_title)?;
        // Each of these started a node that took nothing, or analysed
        // nothing, or failed every job with a false reason.
        if self.node.data_dir.as_os_str().is_empty() {
            bail!("node.data_dir is empty: name the directory the node keeps its data in");
        }
        // A TOML list given to a `PNEUMO__` variable (`'["CR","DX"]'`) is
        // read as words with brackets and quotes, which match nothing.
        for (key, list) in [
            (
                "routing.analyse_modalities",
                &self.routing.analyse_modalities,
            ),
            (
                "routing.analyse_body_parts",
                &self.routing.analyse_body_parts,
            ),
            (
                "routing.analyse_view_positions",
                &self.routing.analyse_view_positions,
            ),
        ] {
            if let Some(v) = list.iter().find(|v| v.contains(['[', ']', '"', '\''])) {
                bail!(
                    "{key} has the value `{v}`: in a PNEUMO__ variable, give the words \
                     comma-separated (CR,DX), not a TOML list"
                );
            }
        }
        if self.dicom.port == 0 || self.http.port == 0 {
            bail!(
                "dicom.port and http.port must be 1 to 65535 (0 would listen on a port no one knows)"
            );
        }
        if self.pipeline.concurrency == 0 || self.pipeline.max_attempts == 0 {
            bail!("pipeline.concurrency and pipeline.max_attempts must be at least 1");
        }
        if self.pipeline.lease_s < MIN_LEASE_S {
            bail!(
                "pipeline.lease_s {} must be at least {MIN_LEASE_S} seconds: a job still being \
                 analysed is taken again when its lease ends",
                self.pipeline.lease_s
            );
        }
        if !(16_384..=(64 << 20)).contains(&self.dicom.max_pdu) {
            bail!(
                "dicom.max_pdu {} must be between 16384 and 67108864 bytes",
                self.dicom.max_pdu
            );
        }
        if self.dicom.max_associations == 0 {
            bail!("dicom.max_associations must be at least 1");
        }
        if self.dicom.read_timeout_s == 0 || self.dicom.idle_timeout_s == 0 {
            bail!("dicom.read_timeout_s and dicom.idle_timeout_s must be at least 1 second");
        }
        for (i, d) in self.destinations.iter().enumerate() {
            if d.name.is_empty()
                || d.ae_title.is_empty()
                || d.ae_title.len() > 16
                || d.host.is_empty()
            {
                bail!(
                    "destinations[{i}] needs a name, an AE title of 1 to 16 characters and a host"
                );
            }
            if self.destinations[..i].iter().any(|o| o.name == d.name) {
                bail!("destinations[{i}]: the name `{}` is used twice", d.name);
            }
        }
        self.routing
            .validate(&self.destinations)
            .map_err(anyhow::Error::msg)?;
        for (i, d) in self.destinations.iter().enumerate() {
            if d.port == 0 {
                bail!("destinations[{i}] (`{}`): port must be 1 to 65535", d.name);
            }
            if let Some(problem) = host_problem(&d.host) {
                bail!(
                    "destinations[{i}] (`{}`): host `{}` {problem}",
                    d.name,
                    d.host.escape_debug()
                );
            }
            check_ae_title(
                &format!("destinations[{i}] (`{}`): ae_title", d.name),
                &d.ae_title,
            )?;
        }
        for (i, c) in self.dicom.allowed_callers.iter().enumerate() {
            check_ae_title(&format!("dicom.allowed_callers[{i}].ae_title"), &c.ae_title)?;
        }
        let requesters = &self.dicom.commitment_requesters;
        for (i, r) in requesters.iter().enumerate() {
            let key = format!("dicom.commitment_requesters[{i}]");
            check_ae_title(&format!("{key}.ae_title"), &r.ae_title)?;
            if r.host.is_empty() || r.port == 0 {
                bail!(
                    "{key} (`{}`) needs a host and a port of 1 to 65535",
                    r.ae_title
                );
            }
            if let Some(problem) = host_problem(&r.host) {
                bail!(
                    "{key} (`{}`): host `{}` {problem}",
                    r.ae_title,
                    r.host.escape_debug()
                );
            }
            if requesters[..i].iter().any(|o| o.ae_title == r.ae_title) {
                bail!("{key}: the AE title `{}` is listed twice", r.ae_title);
            }
        }
        // A caller no AE can be would make its rule match nothing, silently.
        let rule_callers = [
            (
                "routing.forward",
                self.routing
                    .forward
                    .iter()
                    .map(|r| &r.calling_ae_titles)
                    .collect::<Vec<_>>(),
            ),
            (
                "routing.results",
                self.routing
                    .results
                    .iter()
                    .map(|r| &r.calling_ae_titles)
                    .collect(),
            ),
        ];
        let allowed = &self.dicom.allowed_callers;
        for (section, rules) in rule_callers {
            for (i, titles) in rules.into_iter().enumerate() {
                for ae in titles {
                    check_ae_title(&format!("{section}[{i}].calling_ae_titles"), ae)?;
                    // Nor one the node refuses (titles compare exactly).
                    if !allowed.is_empty() && !allowed.iter().any(|c| &c.ae_title == ae) {
                        bail!(
                            "{section}[{i}].calling_ae_titles names `{ae}`, which \
                             dicom.allowed_callers does not list (AE titles compare exactly, \
                             upper and lower case too): the rule could never match"
                        );
                    }
                }
            }
        }
        if let Some(c) = self
            .dicom
            .also_accept
            .iter()
            .find(|c| !pneumo_report::is_valid_uid(c))
        {
            bail!(
                "dicom.also_accept has `{c}`, which is not a SOP Class UID (a private class \
                 is its vendor's UID, as in 1.3.12.2.1107.5.9.1; docs/conformance.md)"
            );
        }
        for (i, rule) in self.routing.forward.iter().enumerate() {
            if let Some(c) = rule
                .sop_classes
                .iter()
                .find(|c| !pneumo_report::is_valid_uid(c))
            {
                bail!(
                    "routing.forward[{i}].sop_classes has `{c}`, which is not a SOP Class UID \
                     (CR Image Storage is 1.2.840.10008.5.1.4.1.1.1; docs/conformance.md): \
                     the rule could never match"
                );
            }
        }
        if self.outbox.retry_base_s == 0 || self.outbox.retry_cap_s < self.outbox.retry_base_s {
            bail!("outbox.retry_base_s must be at least 1 and outbox.retry_cap_s at least retry_base_s");
        }
        if !(1..=1000).contains(&self.outbox.batch) {
            bail!(
                "outbox.batch {} must be between 1 and 1000",
                self.outbox.batch
            );
        }
        if self.outbox.response_timeout_s == 0 || self.outbox.connect_timeout_s == 0 {
            bail!(
                "outbox.response_timeout_s and outbox.connect_timeout_s must be at least 1 second"
            );
        }
        // Checked now, not at the first report: a bad UID would fail every
        // analysis of a node that says it is ready.
        self.report
            .node_identity(&self.dicom.ae_title)
            .validate()
            .map_err(|e| anyhow::anyhow!("report.device_uid / report.uid_root: {e}"))?;
        if !self.database.url.is_empty() && !self.database.url.starts_with("sqlite:") {
            bail!("database.url must be a sqlite: URL (PostgreSQL is not supported yet)");
        }
        if let Some(rest) = self.database.url.strip_prefix("sqlite:") {
            // the path as sqlx reads it: after `sqlite://` or `sqlite:`
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let named = Path::new(path.split('?').next().unwrap_or_default());
            let no_file = named.as_os_str().is_empty() || named == Path::new("/");
            if no_file || rest.contains(":memory:") || rest.contains("mode=memory") {
                bail!(
                    "database.url `{}` names no database file (an in-memory database loses \
                     every acknowledged instance at a stop)",
                    self.database.url
                );
            }
            // A directory or a device (`/dev/null`, where SQLite then made
            // `/dev/null-journal`): every start would fail.
            if named.exists() && !named.is_file() {
                bail!(
                    "database.url `{}` names {}, which is not a regular file",
                    self.database.url,
                    named.display()
                );
            }
        }
        if self.retention.interval_s == 0 {
            bail!("retention.interval_s must be at least 1 second");
        }
        // Both on one port: `check-config` said OK and `serve` failed.
        let (dicom, http) = (
            self.listen_addr(),
            SocketAddr::new(self.http.bind, self.http.port),
        );
        let overlap =
            dicom.ip() == http.ip() || dicom.ip().is_unspecified() || http.ip().is_unspecified();
        if dicom.port() == http.port() && dicom.port() != 0 && overlap {
            bail!(
                "dicom.port and http.port are both {} on {} and {}: give each its own port",
                dicom.port(),
                dicom.ip(),
                http.ip()
            );
        }
        self.inference.validate()?;
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.dicom.bind, self.dicom.port)
    }

    pub fn database_url(&self) -> Option<&str> {
        Some(self.database.url.as_str()).filter(|u| !u.is_empty())
    }

    pub fn scp_config(&self, spool_dir: PathBuf) -> ScpConfig {
        let d = &self.dicom;
        ScpConfig {
            ae_title: d.ae_title.clone(),
            require_called_ae: d.require_called_ae,
            allowed_callers: d
                .allowed_callers
                .iter()
                .map(|c| AllowedCaller {
                    ae_title: c.ae_title.clone(),
                    host: c.host,
                })
                .collect(),
            max_pdu: d.max_pdu,
            max_associations: d.max_associations,
            read_timeout: Duration::from_secs(d.read_timeout_s),
            idle_timeout: Duration::from_secs(d.idle_timeout_s),
            min_receive_rate: d.min_receive_rate_kib_s.saturating_mul(1024),
            shutdown_grace: Duration::from_secs(d.shutdown_grace_s),
            acceptance: match d.accept {
                Accept::Chest => StorageAcceptance::Chest,
                Accept::AllStorage => StorageAcceptance::AllStorage,
            },
            also_accept: d.also_accept.clone(),
            spool_dir,
            storage_commitment: d.storage_commitment,
        }
    }
}

/// Why `host` can be no host name nor address, if it cannot: a port, a
/// scheme or a path written into it, or spaces, never resolve (every
/// delivery failed for ever, after a warning only). An IPv6 address has
/// colons, bracketed or not.
fn host_problem(host: &str) -> Option<&'static str> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("holds a space or a control character: give the name or address alone")
    } else if host.contains(['/', '@']) {
        Some("is no host name or address (a scheme, path or user in it?): give the name or address alone")
    } else if host.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err() {
        Some("holds a colon and is no IPv6 address: give the port in `port`, not in `host`")
    } else {
        None
    }
}

/// An AE title as PS3.5 6.2 has it: 1 to 16 characters of the default
/// repertoire, no backslash nor control character, not only spaces. The
/// value is shown escaped (a control character would garble the message).
fn check_ae_title(key: &str, ae: &str) -> Result<()> {
    if pneumo_dimse::ae_title_problem(ae).is_none() {
        return Ok(());
    }
    bail!(
        "{key} `{}` must be 1 to 16 ASCII characters, not all spaces, without backslash or control characters",
        ae.escape_debug()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Config::load` of a file holding `text`.
    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text)?;
        Config::load(Some(&path))
    }

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pneumo-node.toml");
        let config = Config::load(Some(&path)).unwrap();
        let defaults = Config::default();
        assert_eq!(config.dicom.ae_title, defaults.dicom.ae_title);
        assert_eq!(config.dicom.port, defaults.dicom.port);
        assert_eq!(config.dicom.max_pdu, defaults.dicom.max_pdu);
        assert_eq!(config.node.data_dir, defaults.node.data_dir);
        assert_eq!(config.inference, defaults.inference);
        assert_eq!(config.report, defaults.report);
        assert_eq!(config.pipeline, defaults.pipeline);
        assert_eq!(config.routing, defaults.routing);
    }

    #[test]
    fn check_config_output_loads_back_as_the_same_configuration() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pneumo-node.toml");
        let mut config = Config::load(Some(&example)).unwrap();
        config.destinations.push(toml::from_str(
            "name = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\nresults = true",
        ).unwrap());
        config.routing.forward.push(crate::routing::ForwardRule {
            destinations: vec!["pacs".into()],
            modalities: vec!["CR".into()],
            ..crate::routing::ForwardRule::default()
        });
        let printed = config.to_toml().unwrap();
        let again = load_text(&printed).unwrap();
        assert_eq!(format!("{again:?}"), format!("{config:?}"), "{printed}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let mut c = Config::default();
        c.dicom.ae_title = "THIS_TITLE_IS_TOO_LONG".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dicom.ae_title"));
        let mut c = Config::default();
        c.dicom.max_pdu = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dicom.max_pdu"));
    }

    #[test]
    fn an_unknown_enum_value_is_refused_with_its_key_and_the_choices() {
        let err = format!(
            "{:#}",
            load_text("[inference]\ncuda_conv_algo_search = \"fastest\"\n").unwrap_err()
        );
        assert!(
            err.contains("fastest")
                && err.contains("inference.cuda_conv_algo_search")
                && err.contains("`heuristic`, `exhaustive`, `default`"),
            "{err}"
        );
        let c = load_text("[inference]\ncuda_conv_algo_search = \"exhaustive\"\n").unwrap();
        assert_eq!(
            c.inference.cuda_conv_algo_search,
            pneumo_inference::ConvAlgoSearch::Exhaustive
        );
    }

    #[test]
    fn an_error_names_the_file_by_its_full_path() {
        // A relative path, as `--config node.toml` gives it: the message
        // names the file wherever the node was started from.
        let dir = tempfile::tempdir_in(".").unwrap();
        let relative = dir
            .path()
            .strip_prefix(std::env::current_dir().unwrap())
            .unwrap_or(dir.path())
            .join("bad.toml");
        std::fs::write(&relative, "[dicom]\nmax_associations = 0\n").unwrap();
        assert!(relative.is_relative(), "{}", relative.display());
        let error = format!("{:#}", Config::load(Some(&relative)).unwrap_err());
        let full = std::path::absolute(&relative).unwrap();
        assert!(
            error.contains(&format!("invalid configuration ({})", full.display())),
            "{error}"
        );
        assert!(error.contains("max_associations"), "{error}");
    }

    #[test]
    fn an_allowed_caller_no_results_rule_names_is_warned_about() {
        let text = "[[dicom.allowed_callers]]\nae_title = \"CR_ROOM1\"\n\
                    [[dicom.allowed_callers]]\nae_title = \"CR_ROOM2\"\n\
                    [[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n\
                    [[routing.results]]\ndestinations = [\"pacs\"]\ncalling_ae_titles = [\"CR_ROOM1\"]\n";
        let warnings = load_text(text).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("`CR_ROOM2`"), "{warnings:?}");
        // a rule for every caller covers them all
        let everyone = text.replace("calling_ae_titles = [\"CR_ROOM1\"]\n", "");
        assert!(load_text(&everyone).unwrap().warnings().is_empty());
    }

    #[test]
    fn a_results_flag_results_to_leaves_out_is_warned_about() {
        let text = "[[destinations]]\nname = \"a\"\nae_title = \"A\"\nhost = \"h\"\nport = 104\nresults = true\n\
                    [[destinations]]\nname = \"b\"\nae_title = \"B\"\nhost = \"h\"\nport = 104\nresults = true\n\
                    [routing]\nresults_to = [\"b\"]\n";
        let warnings = load_text(text).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("destination `a` has results = true"),
            "{warnings:?}"
        );
        let listed = text.replace("[\"b\"]", "[\"a\", \"b\"]");
        assert!(load_text(&listed).unwrap().warnings().is_empty());
        let off = "[dicom]\nstorage_commitment = false\n[[dicom.commitment_requesters]]\n\
                   ae_title = \"ORTHANC\"\nhost = \"h\"\nport = 4242\n";
        let warnings = load_text(off).unwrap().warnings();
        assert!(
            warnings[0].contains("storage_commitment is false"),
            "{warnings:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = format!(
            "{:#}",
            load_text("[dicom]\nae_tittle = \"X\"\n").unwrap_err()
        );
        assert!(err.contains("ae_tittle"), "{err}");
    }

    #[test]
    fn values_that_would_fail_later_are_refused_at_start_with_their_key() {
        for (text, key) in [
            ("[outbox]\nbatch = 0\n", "outbox.batch"),
            ("[outbox]\nresponse_timeout_s = 0\n", "outbox.response_timeout_s"),
            ("[report]\nuid_root = \"1.2.abc\"\n", "report.device_uid / report.uid_root"),
            ("[report]\ndevice_uid = \"abc\"\n", "report.device_uid / report.uid_root"),
            (
                "[[dicom.allowed_callers]]\nae_title = \"A_TITLE_OF_MORE_THAN_16\"\n",
                "dicom.allowed_callers[0].ae_title",
            ),
            (
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 0\n",
                "destinations[0] (`pacs`): port",
            ),
            (
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1:104\"\nport = 104\n",
                "destinations[0] (`pacs`): host `127.0.0.1:104` holds a colon",
            ),
            (
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"dicom://pacs\"\nport = 104\n",
                "is no host name or address",
            ),
            (
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \" 10.1.2.3\"\nport = 104\n",
                "holds a space",
            ),
            (
                "[[dicom.commitment_requesters]]\nae_title = \"ORTHANC\"\nhost = \"h:4242\"\nport = 4242\n",
                "dicom.commitment_requesters[0] (`ORTHANC`): host `h:4242` holds a colon",
            ),
            (
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n\
                 [[routing.forward]]\ndestinations = [\"pacs\"]\nmodalities = [\"\"]\n",
                "routing.forward[0].modalities has an empty term",
            ),
            (
                "[[dicom.commitment_requesters]]\nae_title = \"ORTHANC\"\nhost = \"\"\nport = 4242\n",
                "dicom.commitment_requesters[0] (`ORTHANC`) needs a host",
            ),
            (
                "[[dicom.commitment_requesters]]\nae_title = \"ORTHANC\"\nhost = \"h\"\nport = 4242\n\
                 [[dicom.commitment_requesters]]\nae_title = \"ORTHANC \"\nhost = \"g\"\nport = 4242\n",
                "dicom.commitment_requesters[1]: the AE title `ORTHANC` is listed twice",
            ),
            (
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n\
                 [[routing.forward]]\ndestinations = [\"pacs\"]\nsop_classes = [\"CR\"]\n",
                "routing.forward[0].sop_classes has `CR`",
            ),
            (
                "[[dicom.allowed_callers]]\nae_title = \"CR_ROOM1\"\n\
                 [[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n\
                 [[routing.results]]\ndestinations = [\"pacs\"]\ncalling_ae_titles = [\"cr_room1\"]\n",
                "routing.results[0].calling_ae_titles names `cr_room1`",
            ),
        ] {
            let err = format!("{:#}", load_text(text).unwrap_err());
            assert!(err.contains(key), "{text}: {err}");
        }
        for text in [
            "[inference]\nmax_batch = 1.5\n",
            "[inference]\nmax_batch = 0.4\n",
        ] {
            let err = format!("{:#}", load_text(text).unwrap_err());
            assert!(
                err.contains("inference.max_batch") && err.contains("floating point"),
                "{err}"
            );
        }
        let ok =
            load_text("[report]\nuid_root = \"1.2.826.0.1.3680043.10.543\"\n[outbox]\nbatch = 1\n");
        assert!(ok.is_ok(), "{:#}", ok.unwrap_err());
        for host in ["::1", "[fe80::1]", "pacs.example", "10.1.2.3"] {
            let text = format!(
                "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"{host}\"\nport = 104\n"
            );
            assert!(load_text(&text).is_ok(), "{host}");
        }
        // A rule's terms are trimmed: "CR " matched no image.
        let text =
            "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n\
                    [[routing.forward]]\ndestinations = [\"pacs \"]\nmodalities = [\"CR \"]\n";
        let twice = "[[destinations]]\nname = \"north\"\nae_title = \"A\"\nhost = \"h\"\nport = 104\n\
                     [[destinations]]\nname = \"north \"\nae_title = \" B \"\nhost = \"h\"\nport = 104\n";
        let err = format!("{:#}", load_text(twice).unwrap_err());
        assert!(err.contains("the name `north` is used twice"), "{err}");
        let rule = &load_text(text).unwrap().routing.forward[0];
        assert_eq!(rule.modalities, ["CR"]);
        assert_eq!(rule.destinations, ["pacs"]);
    }
}
