//! The libvirt calls numapin makes, each bounded by the connection's
//! timeout. Domains are looked up by UUID on every call: names can be
//! reused, a UUID plus the running id names one run of one domain.
//!
//! Pin read-back uses libvirt's pin-info calls (what libvirt applied to the
//! threads), not the live XML, whose `<cputune>` omits unpinned vCPUs.

use std::collections::BTreeMap;
use std::os::raw::{c_int, c_uint, c_void};
use std::ptr;

use serde::{Deserialize, Serialize};
use virt::connect::Connect;
use virt::domain::{Domain, NUMAParameters};
use virt::error::Error;
use virt::sys;

use crate::idset::{CpuSet, NodeSet};
use crate::nested::{VcpuStats, vcpu_counters};

use super::connection::Libvirt;
use crate::host_error::{ErrorKind, HostError};

/// One running domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainRef {
    pub name: String,
    pub uuid: String,
    /// libvirt's id of this run: changes when the domain is restarted.
    pub id: u32,
}

/// A domain's thread affinities as libvirt reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub vcpus: BTreeMap<u32, CpuSet>,
    pub emulator: CpuSet,
    pub iothreads: BTreeMap<u32, CpuSet>,
}

/// `<numatune><memory>` of a running domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBinding {
    /// libvirt's mode name (strict, preferred, interleave, restrictive),
    /// None when the domain has no binding.
    pub mode: Option<String>,
    pub nodeset: Option<NodeSet>,
}

/// Where a change is made: the running domain, or its persistent
/// definition (used once a live change is verified, when persisting is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Live,
    Config,
}

impl Scope {
    fn flags(self) -> c_uint {
        (match self {
            Scope::Live => sys::VIR_DOMAIN_AFFECT_LIVE,
            Scope::Config => sys::VIR_DOMAIN_AFFECT_CONFIG,
        }) as c_uint
    }
}

fn lookup(conn: &Connect, uuid: &str) -> Result<Domain, Error> {
    conn.lookup_domain_by_uuid_string(uuid)
}

/// Number of CPUs libvirt's cpumaps cover on this host.
fn host_cpus(conn: &Connect) -> Result<usize, Error> {
    // SAFETY: null output pointers ask for the count only.
    let n = unsafe { sys::virNodeGetCPUMap(conn.as_ptr(), ptr::null_mut(), ptr::null_mut(), 0) };
    if n < 0 {
        return Err(Error::last_error());
    }
    Ok(n as usize)
}

fn map_len(cpus: usize) -> usize {
    cpus.div_ceil(8).max(1)
}

fn check(ret: c_int) -> Result<c_int, Error> {
    if ret < 0 {
        Err(Error::last_error())
    } else {
        Ok(ret)
    }
}

fn read_pins(conn: &Connect, dom: &Domain) -> Result<Pins, Error> {
    let len = map_len(host_cpus(conn)?);
    let flags = sys::VIR_DOMAIN_AFFECT_LIVE as c_uint;
    let max_vcpus = dom.vcpus_flags(sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_VCPU_MAXIMUM)?;
    let mut maps = vec![0u8; len * max_vcpus as usize];
    // SAFETY: `maps` holds `max_vcpus` maps of `len` bytes each.
    let n = check(unsafe {
        sys::virDomainGetVcpuPinInfo(
            dom.as_ptr(),
            max_vcpus as c_int,
            maps.as_mut_ptr(),
            len as c_int,
            flags,
        )
    })? as usize;
    let vcpus = maps
        .chunks(len)
        .take(n)
        .enumerate()
        .map(|(i, m)| (i as u32, CpuSet::from_bitmap_bytes(m)))
        .collect();

    let mut map = vec![0u8; len];
    // SAFETY: `map` is `len` bytes.
    check(unsafe {
        sys::virDomainGetEmulatorPinInfo(dom.as_ptr(), map.as_mut_ptr(), len as c_int, flags)
    })?;
    let emulator = CpuSet::from_bitmap_bytes(&map);

    let mut info: *mut sys::virDomainIOThreadInfoPtr = ptr::null_mut();
    // SAFETY: libvirt allocates `info`; every element and the array are
    // freed below.
    let count = check(unsafe { sys::virDomainGetIOThreadInfo(dom.as_ptr(), &mut info, flags) })?;
    let mut iothreads = BTreeMap::new();
    for i in 0..count as usize {
        // SAFETY: libvirt returned `count` valid pointers.
        unsafe {
            let entry = *info.add(i);
            let bytes = std::slice::from_raw_parts((*entry).cpumap, (*entry).cpumaplen as usize);
            iothreads.insert((*entry).iothread_id, CpuSet::from_bitmap_bytes(bytes));
            sys::virDomainIOThreadInfoFree(entry);
        }
    }
    if !info.is_null() {
        // SAFETY: the array itself was malloc'ed by libvirt.
        unsafe { libc::free(info as *mut c_void) };
    }
    Ok(Pins {
        vcpus,
        emulator,
        iothreads,
    })
}

fn mode_name(mode: i32) -> Option<&'static str> {
    match mode as u32 {
        sys::VIR_DOMAIN_NUMATUNE_MEM_STRICT => Some("strict"),
        sys::VIR_DOMAIN_NUMATUNE_MEM_PREFERRED => Some("preferred"),
        sys::VIR_DOMAIN_NUMATUNE_MEM_INTERLEAVE => Some("interleave"),
        sys::VIR_DOMAIN_NUMATUNE_MEM_RESTRICTIVE => Some("restrictive"),
        _ => None,
    }
}

impl Libvirt {
    pub fn capabilities(&self) -> Result<String, HostError> {
        self.call("capabilities", |c| c.capabilities())
    }

    pub fn running_domains(&self) -> Result<Vec<DomainRef>, HostError> {
        self.call("list domains", |c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)? {
                // A domain that stops while being listed has no id.
                let Some(id) = d.id() else { continue };
                out.push(DomainRef {
                    name: d.name()?,
                    uuid: d.uuid_string()?,
                    id,
                });
            }
            out.sort();
            Ok(out)
        })
    }

    /// The running domain with this UUID, or a Gone error.
    pub fn domain(&self, uuid: &str) -> Result<DomainRef, HostError> {
        let u = uuid.to_string();
        let op = format!("look up domain {uuid}");
        let (name, id) = self.call(&op, move |c| {
            let d = lookup(c, &u)?;
            Ok((d.name()?, d.id()))
        })?;
        let id = id.ok_or_else(|| HostError::new(&op, ErrorKind::Gone, "domain is not running"))?;
        Ok(DomainRef {
            name,
            uuid: uuid.to_string(),
            id,
        })
    }

    /// Live XML, and the persistent XML when the domain has one.
    pub fn domain_xml(&self, d: &DomainRef) -> Result<(String, Option<String>), HostError> {
        let uuid = d.uuid.clone();
        self.call(&format!("dumpxml {}", d.name), move |c| {
            let dom = lookup(c, &uuid)?;
            let live = dom.xml_desc(0)?;
            let persistent = if dom.is_persistent()? {
                Some(dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)
            } else {
                None
            };
            Ok((live, persistent))
        })
    }

    pub fn is_persistent(&self, d: &DomainRef) -> Result<bool, HostError> {
        let uuid = d.uuid.clone();
        self.call(&format!("is {} persistent", d.name), move |c| {
            lookup(c, &uuid)?.is_persistent()
        })
    }

    pub fn pins(&self, d: &DomainRef) -> Result<Pins, HostError> {
        let uuid = d.uuid.clone();
        self.call(&format!("read pins of {}", d.name), move |c| {
            read_pins(c, &lookup(c, &uuid)?)
        })
    }

    pub fn memory_binding(&self, d: &DomainRef) -> Result<MemoryBinding, HostError> {
        let uuid = d.uuid.clone();
        let op = format!("numatune {}", d.name);
        let params = self.call(&op, move |c| {
            lookup(c, &uuid)?.numa_parameters(sys::VIR_DOMAIN_AFFECT_LIVE)
        })?;
        let nodeset = match params.node_set.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse().map_err(|e| {
                HostError::new(
                    &op,
                    ErrorKind::Failed,
                    &format!("libvirt reported nodeset {text:?}: {e}"),
                )
            })?),
        };
        // libvirt reports a mode even without <numatune> (strict, its
        // default); without a nodeset there is no binding to speak of.
        let mode = nodeset
            .as_ref()
            .and(params.mode)
            .and_then(mode_name)
            .map(str::to_string);
        Ok(MemoryBinding { mode, nodeset })
    }

    pub fn pin_vcpu(
        &self,
        d: &DomainRef,
        vcpu: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let (uuid, cpus) = (d.uuid.clone(), cpus.clone());
        self.call(&format!("vcpupin {} {vcpu} {cpus}", d.name), move |c| {
            let map = cpus.to_bitmap_bytes(map_len(host_cpus(c)?).max(bytes_for(&cpus)));
            lookup(c, &uuid)?.pin_vcpu_flags(vcpu, &map, scope.flags())
        })
    }

    pub fn pin_emulator(
        &self,
        d: &DomainRef,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let (uuid, cpus) = (d.uuid.clone(), cpus.clone());
        self.call(&format!("emulatorpin {} {cpus}", d.name), move |c| {
            let map = cpus.to_bitmap_bytes(map_len(host_cpus(c)?).max(bytes_for(&cpus)));
            lookup(c, &uuid)?.pin_emulator(&map, scope.flags())
        })
    }

    pub fn pin_iothread(
        &self,
        d: &DomainRef,
        iothread: u32,
        cpus: &CpuSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let (uuid, cpus) = (d.uuid.clone(), cpus.clone());
        self.call(
            &format!("iothreadpin {} {iothread} {cpus}", d.name),
            move |c| {
                let mut map = cpus.to_bitmap_bytes(map_len(host_cpus(c)?).max(bytes_for(&cpus)));
                let dom = lookup(c, &uuid)?;
                // SAFETY: `map` is valid for its length during the call.
                check(unsafe {
                    sys::virDomainPinIOThread(
                        dom.as_ptr(),
                        iothread,
                        map.as_mut_ptr(),
                        map.len() as c_int,
                        scope.flags(),
                    )
                })
                .map(|_| ())
            },
        )
    }

    /// Every running domain's vCPU run-queue wait and nested-guest entries
    /// (libvirt's vCPU stats), by UUID.
    pub fn vcpu_stats(&self) -> Result<BTreeMap<String, VcpuStats>, HostError> {
        self.call("domain vCPU stats", all_vcpu_stats)
    }

    /// Changes the memory nodeset of a running domain. libvirt accepts it
    /// live only for `restrictive` bindings.
    pub fn set_memory_nodeset(
        &self,
        d: &DomainRef,
        nodeset: &NodeSet,
        scope: Scope,
    ) -> Result<(), HostError> {
        let (uuid, text) = (d.uuid.clone(), nodeset.to_string());
        self.call(&format!("numatune {} --nodeset {text}", d.name), move |c| {
            let params = NUMAParameters {
                node_set: Some(text),
                mode: None,
            };
            lookup(c, &uuid)?.set_numa_parameters(params, scope.flags())
        })
    }
}

/// Frees the record list `virConnectGetAllDomainStats` returned.
struct StatsRecords(*mut sys::virDomainStatsRecordPtr);

impl Drop for StatsRecords {
    fn drop(&mut self) {
        // SAFETY: the list came from virConnectGetAllDomainStats and is
        // freed once, here.
        unsafe { sys::virDomainStatsRecordListFree(self.0) }
    }
}

/// Every running domain's vCPU counters, by UUID, in one call.
fn all_vcpu_stats(conn: &Connect) -> Result<BTreeMap<String, VcpuStats>, Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
    // SAFETY: libvirt fills `records` with a NULL-terminated list of `n`
    // records, owned by the guard below.
    let n = check(unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            sys::VIR_DOMAIN_STATS_VCPU as c_uint,
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE as c_uint,
        )
    })?;
    let _guard = StatsRecords(records);
    let mut out = BTreeMap::new();
    for i in 0..n as usize {
        // SAFETY: `i` < `n` records, each valid until the guard drops.
        let record = unsafe { &**records.add(i) };
        let mut uuid = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
        // SAFETY: the buffer has the length libvirt documents for it.
        if unsafe { sys::virDomainGetUUIDString(record.dom, uuid.as_mut_ptr()) } < 0 {
            continue;
        }
        // SAFETY: libvirt wrote a NUL-terminated string.
        let uuid = unsafe { std::ffi::CStr::from_ptr(uuid.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let params: &[sys::virTypedParameter] = if record.params.is_null() || record.nparams <= 0 {
            &[]
        } else {
            // SAFETY: `params` holds `nparams` entries.
            unsafe { std::slice::from_raw_parts(record.params, record.nparams as usize) }
        };
        let fields = params.iter().filter_map(|p| {
            if p.type_ != sys::VIR_TYPED_PARAM_ULLONG as c_int {
                return None;
            }
            // SAFETY: `field` is a NUL-terminated array; the type says
            // which union member is set.
            let name = unsafe { std::ffi::CStr::from_ptr(p.field.as_ptr()) }
                .to_str()
                .ok()?;
            Some((name, unsafe { p.value.ul }))
        });
        out.insert(uuid, vcpu_counters(fields));
    }
    Ok(out)
}

/// Bytes needed to hold every id of `cpus`, so a CPU beyond the host is
/// sent to libvirt (which refuses it) rather than silently dropped.
fn bytes_for(cpus: &CpuSet) -> usize {
    cpus.last().map_or(1, |last| last as usize / 8 + 1)
}
