//! Reads libvirt's capabilities XML (`virsh capabilities`).
//! TODO(helper A): implement.
use super::HostTopology;

#[derive(Debug, thiserror::Error)]
pub enum CapabilitiesError {
    #[error("not well-formed XML: {0}")]
    Xml(#[from] roxmltree::Error),
}

pub fn parse(_xml: &str) -> Result<HostTopology, CapabilitiesError> {
    unimplemented!()
}
