//! Validate step: pure checks of a ProvisioningService against what dereference found.

use std::{collections::BTreeMap, collections::BTreeSet, time::SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kdps_api::{
    v1alpha1::{IoTHubLink, ProvisioningService},
    validation::{Reason, validate_iot_hub_link, validate_provisioning_service},
};
use kube::ResourceExt;

use crate::{
    controller::{Issue, LABEL_MANAGED_BY, MANAGED_BY, NamespaceState},
    idscope,
    pki::{self, UserTls},
};

/// Condition reason: another ProvisioningService already serves the namespace.
pub const REASON_CONFLICT: &str = "Conflict";
/// Condition reason: the name cannot be used for the Service.
pub const REASON_INVALID_NAME: &str = "InvalidName";

/// What dereference read for one ProvisioningService. Debug output never shows Secret data.
#[derive(Clone, Default)]
pub struct Dereferenced {
    /// The other ProvisioningServices in the namespace.
    pub siblings: Vec<ProvisioningService>,
    /// The IoTHubLinks in the namespace (those that deserialize).
    pub links: Vec<IoTHubLink>,
    /// State of every link's device namespace.
    pub namespaces: BTreeMap<String, NamespaceState>,
    /// When `spec.tls` is set: the named Secret, if it exists.
    pub user_tls_secret: Option<Option<Secret>>,
    /// When `spec.tls` is not set: the Secret `<name>-tls` the operator writes, if it exists.
    pub managed_tls_secret: Option<Secret>,
}

impl std::fmt::Debug for Dereferenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<Secret>| s.as_ref().map(crate::controller::describe_secret);
        f.debug_struct("Dereferenced")
            .field("siblings", &self.siblings.len())
            .field("links", &self.links.len())
            .field("namespaces", &self.namespaces)
            .field(
                "user_tls_secret",
                &self.user_tls_secret.as_ref().map(secret),
            )
            .field("managed_tls_secret", &secret(&self.managed_tls_secret))
            .finish()
    }
}

/// A ProvisioningService that passed validation, with what build needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
    /// The ID scope in force.
    pub id_scope: String,
    /// Where it came from.
    pub id_scope_source: idscope::Source,
    /// Hub namespaces that exist, of the valid links: each gets a Role and RoleBinding.
    pub hub_namespaces: BTreeSet<String>,
    /// Links whose hub namespace is missing or terminating (reported, no RBAC yet).
    pub waiting_links: Vec<String>,
    /// The user-supplied serving certificate, when `spec.tls` is set.
    pub user_tls: Option<UserTls>,
}

/// The ID scope for `ps` (spec, then status, then derived from the UID).
pub fn id_scope(ps: &ProvisioningService, uid: &str) -> (String, idscope::Source) {
    idscope::resolve(
        ps.spec.id_scope.as_deref(),
        ps.status.as_ref().and_then(|s| s.id_scope.as_deref()),
        uid,
    )
}

/// True for a DNS-1035 label (what a Service name must be): at most 63 lower-case letters,
/// digits and '-', starting with a letter, ending with a letter or digit.
pub fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Validate `ps` (named `name` in `namespace`, UID `uid`). `now` is for certificate validity.
pub fn validate(
    ps: &ProvisioningService,
    name: &str,
    namespace: &str,
    uid: &str,
    deref: &Dereferenced,
    now: SystemTime,
) -> Result<Validated, Vec<Issue>> {
    let mut issues: Vec<Issue> = Vec::new();
    if !is_dns1035_label(name) {
        issues.push(Issue::new(
            REASON_INVALID_NAME,
            format!(
                "metadata.name: {name:?} cannot name the registration Service: use at most 63 lower-case letters, digits and '-', starting with a letter"
            ),
        ));
    }
    if let Err(problems) = validate_provisioning_service(ps, now) {
        issues.extend(problems.into_iter().map(Issue::from));
    }
    if let Some(older) = crate::controller::oldest(
        deref
            .siblings
            .iter()
            .filter(|s| s.name_any() != name)
            .filter(|s| {
                (
                    s.metadata.creation_timestamp.clone(),
                    s.metadata.name.clone(),
                ) < (
                    ps.metadata.creation_timestamp.clone(),
                    ps.metadata.name.clone(),
                )
            })
            .cloned(),
    ) {
        issues.push(Issue::new(
            REASON_CONFLICT,
            format!(
                "ProvisioningService {:?} already serves namespace {namespace:?}; only one ProvisioningService per namespace is allowed",
                older.name_any()
            ),
        ));
    }
    let unix_now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut user_tls = None;
    if let Some(tls) = &ps.spec.tls {
        match &deref.user_tls_secret {
            Some(Some(secret)) => match pki::check_user_tls(secret, unix_now) {
                Ok(info) => user_tls = Some(info),
                Err(message) => issues.push(Issue::new(
                    Reason::InvalidCertificate.as_str(),
                    format!("spec.tls.secretName: {message}"),
                )),
            },
            _ => issues.push(Issue::new(
                Reason::SecretNotFound.as_str(),
                format!(
                    "spec.tls.secretName: Secret {:?} does not exist in namespace {namespace:?}",
                    tls.secret_name
                ),
            )),
        }
    }
    if ps.spec.tls.is_none()
        && let Some(existing) = &deref.managed_tls_secret
        && existing.labels().get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY)
    {
        // Never overwrite a Secret someone else made (it may hold their own key).
        issues.push(Issue::new(
            REASON_CONFLICT,
            format!(
                "Secret {:?} exists and was not created by kdps-operator; delete it, or name it in spec.tls.secretName to use it as the serving certificate",
                existing.name_any()
            ),
        ));
    }
    if !issues.is_empty() {
        return Err(issues);
    }

    let mut hub_namespaces = BTreeSet::new();
    let mut waiting_links = Vec::new();
    let mut links: Vec<&IoTHubLink> = deref.links.iter().collect();
    links.sort_by_key(|l| l.name_any());
    for link in links {
        if validate_iot_hub_link(link).is_err() {
            // The link reports its own problems; it gets no RBAC until it is valid.
            continue;
        }
        let ns = &link.spec.device_namespace;
        match deref.namespaces.get(ns) {
            Some(NamespaceState::Active) => {
                hub_namespaces.insert(ns.clone());
            }
            _ => waiting_links.push(link.name_any()),
        }
    }
    let (id_scope, id_scope_source) = id_scope(ps, uid);
    Ok(Validated {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        uid: uid.to_owned(),
        id_scope,
        id_scope_source,
        hub_namespaces,
        waiting_links,
        user_tls,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ps(yaml: &str) -> ProvisioningService {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn link(name: &str, ns: &str) -> IoTHubLink {
        serde_yaml::from_str(&format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: {name}, namespace: iot}}\nspec: {{hostName: {name}.example.com, deviceNamespace: {ns}}}"
        ))
        .unwrap()
    }

    const MINIMAL: &str = "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {name: dps, namespace: iot, uid: u-1, creationTimestamp: '2026-01-02T00:00:00Z'}\nspec: {}";

    #[test]
    fn valid_service_gets_rbac_for_existing_hub_namespaces_only() {
        let deref = Dereferenced {
            links: vec![
                link("hub-west", "hub-west"),
                link("hub-east", "hub-east"),
                link("bad", "Not_A_Namespace"),
            ],
            namespaces: BTreeMap::from([
                ("hub-west".into(), NamespaceState::Active),
                ("hub-east".into(), NamespaceState::Missing),
            ]),
            ..Dereferenced::default()
        };
        let v = validate(&ps(MINIMAL), "dps", "iot", "u-1", &deref, SystemTime::now()).unwrap();
        assert_eq!(v.hub_namespaces, BTreeSet::from(["hub-west".to_owned()]));
        assert_eq!(v.waiting_links, ["hub-east"]);
        assert_eq!(v.id_scope, idscope::generate("u-1"));
        assert_eq!(v.id_scope_source, idscope::Source::Generated);
        assert_eq!(v.user_tls, None);
    }

    #[test]
    fn younger_sibling_is_a_conflict_older_is_not() {
        let older = ps(MINIMAL);
        let mut younger = ps(MINIMAL);
        younger.metadata.name = Some("dps2".into());
        younger.metadata.creation_timestamp =
            Some(serde_json::from_str("\"2026-02-01T00:00:00Z\"").unwrap());
        let deref = Dereferenced {
            siblings: vec![older.clone(), younger.clone()],
            ..Dereferenced::default()
        };
        assert!(validate(&older, "dps", "iot", "u-1", &deref, SystemTime::now()).is_ok());
        let issues =
            validate(&younger, "dps2", "iot", "u-2", &deref, SystemTime::now()).unwrap_err();
        assert_eq!(issues[0].reason, REASON_CONFLICT);
        assert!(
            issues[0]
                .message
                .contains("\"dps\" already serves namespace \"iot\"")
        );
    }

    #[test]
    fn missing_user_tls_secret_and_bad_fields_are_reported() {
        let s = ps(
            "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {name: 1dps, namespace: iot, uid: u}\nspec: {tls: {secretName: mine}, endpoint: {port: 0}}",
        );
        let deref = Dereferenced {
            user_tls_secret: Some(None),
            ..Dereferenced::default()
        };
        let issues = validate(&s, "1dps", "iot", "u", &deref, SystemTime::now()).unwrap_err();
        let reasons: Vec<_> = issues.iter().map(|i| i.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["InvalidName", "InvalidEndpoint", "SecretNotFound"]
        );
        assert!(
            issues[2]
                .message
                .contains("Secret \"mine\" does not exist in namespace \"iot\"")
        );
    }

    #[test]
    fn an_unmanaged_secret_in_the_way_is_a_conflict() {
        let mut secret: Secret = serde_yaml::from_str(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: dps-tls, namespace: iot}",
        )
        .unwrap();
        let mut deref = Dereferenced {
            managed_tls_secret: Some(secret.clone()),
            ..Dereferenced::default()
        };
        let issues =
            validate(&ps(MINIMAL), "dps", "iot", "u-1", &deref, SystemTime::now()).unwrap_err();
        assert_eq!(issues[0].reason, REASON_CONFLICT);
        assert!(issues[0].message.contains("Secret \"dps-tls\" exists"));
        secret.metadata.labels =
            Some([(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned())].into());
        deref.managed_tls_secret = Some(secret);
        assert!(validate(&ps(MINIMAL), "dps", "iot", "u-1", &deref, SystemTime::now()).is_ok());
    }

    #[test]
    fn dns1035() {
        assert!(is_dns1035_label("dps"));
        assert!(is_dns1035_label("d-1"));
        assert!(!is_dns1035_label("1d"));
        assert!(!is_dns1035_label("d-"));
        assert!(!is_dns1035_label("D"));
        assert!(!is_dns1035_label(&"a".repeat(64)));
    }
}
