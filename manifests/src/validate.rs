//! Rules across apps (and so across files): app names are unique, and no two apps claim the
//! same host port (`expose.port`, or `port` of an app on the host network). Each conflict is
//! reported at both places, each pointing to the other. Pure.

use std::collections::BTreeMap;

use crate::app::{App, NetworkMode};
use crate::error::{Diagnostics, Location, ManifestError};
use crate::raw::RawApp;

/// Checks the rules across `apps` (each with its as-written form for locations).
pub(crate) fn across(apps: &[(RawApp, App)], errors: &mut Diagnostics) {
    let mut by_name: BTreeMap<&str, Vec<Location>> = BTreeMap::new();
    for (raw, app) in apps {
        let loc = raw.app.as_ref().map_or(&raw.location, |a| &a.location);
        by_name.entry(&app.app).or_default().push(loc.clone());
    }
    for (name, locs) in &by_name {
        if locs.len() < 2 {
            continue;
        }
        for (i, loc) in locs.iter().enumerate() {
            let other = if i == 0 { &locs[1] } else { &locs[0] };
            errors.push(
                loc.clone(),
                ManifestError::DuplicateApp {
                    app: (*name).to_owned(),
                    other: other.clone(),
                },
            );
        }
    }

    // Host ports: (port) -> claims (app, field, location).
    let mut ports: BTreeMap<u16, Vec<(&str, &'static str, Location)>> = BTreeMap::new();
    for (raw, app) in apps {
        if let (Some(e), Some(re)) = (&app.expose, &raw.expose) {
            let loc = re.value.port.as_ref().map_or(&re.location, |p| &p.location);
            ports
                .entry(e.port)
                .or_default()
                .push((&app.app, "expose.port", loc.clone()));
        }
        if app.network == NetworkMode::Host
            && let (Some(p), Some(rp)) = (app.port, &raw.port)
        {
            ports
                .entry(p)
                .or_default()
                .push((&app.app, "port", rp.location.clone()));
        }
    }
    for (port, claims) in &ports {
        if claims.len() < 2 {
            continue;
        }
        for (i, (_, field, loc)) in claims.iter().enumerate() {
            // Point to the nearest other claim of another app (an app's own expose and host
            // port are checked in normalize).
            let other = claims
                .iter()
                .enumerate()
                .find(|(j, c)| *j != i && c.0 != claims[i].0)
                .map(|(_, c)| c);
            if let Some((other_app, _, other_loc)) = other {
                errors.push(
                    loc.clone(),
                    ManifestError::PortClash {
                        field: (*field).to_owned(),
                        port: *port,
                        other_app: (*other_app).to_owned(),
                        other: other_loc.clone(),
                    },
                );
            }
        }
    }
}
