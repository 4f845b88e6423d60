//! One DNS query in, one response out: [`answer`] reads a query's bytes (and the address it
//! came from) and writes the response into a buffer the caller keeps between queries.
//!
//! Parsing and encoding go through hickory-proto's `BinDecoder`, `Name` and `BinEncoder`,
//! driven record by record rather than through `Message` (which builds vectors of records
//! and an option map for every query). The question name is read with `Name::read` (labels
//! inline up to 32 bytes: no allocation for ordinary names); the rest of the query is walked
//! without allocating; the response is written into the caller's `Vec` (its capacity is
//! kept), names compressed by hand: answers point at the question, names in the zone at the
//! zone's labels inside the question.
//!
//! What is answered (authoritative, AA set, for names in the zone):
//! - apex: SOA, NS (with A/AAAA glue in ADDITIONAL for in-zone name servers); other types
//!   NODATA;
//! - a name server's name: its A/AAAA;
//! - a service's name: A/AAAA steered ([`Steering::steer`]; the client is the EDNS Client
//!   Subnet when present, else the source address) or the fallback CNAME;
//! - any other name in the zone: NXDOMAIN; an existing name without the type (or a name
//!   that exists only because names below it do, RFC 8020): NODATA; both
//!   with the SOA in AUTHORITY at the negative TTL (RFC 2308);
//! - ANY: one RRset (RFC 8482), HINFO "RFC8482" when the name has none to give;
//! - outside the zone: REFUSED (not authoritative); other classes: REFUSED; zone transfers:
//!   REFUSED; opcodes other than QUERY: NOTIMP; malformed queries: FORMERR when the header
//!   could be read, else nothing; responses (QR=1) are never answered.
//!
//! EDNS(0) (RFC 6891): an OPT in the response when the query had one, with our payload size
//! ([`OUR_UDP_PAYLOAD`]); the UDP response fits the smaller of the client's size (at least
//! 512) and ours, 512 without EDNS; when it does not, TC is set and the records are dropped
//! (the client retries over TCP). EDNS versions above 0 get BADVERS. EDNS Client Subnet
//! (RFC 7871): checked (family, prefix lengths, address length, no bits set beyond the
//! source prefix, else FORMERR) and echoed with the scope `steer` returned (0 for answers
//! that do not depend on the client).

use crate::steer::{Client, Family, Source, Steered, Steering};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_proto::ProtoError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The UDP payload size we advertise and answer up to: the DNS flag day 2020 value, which
/// avoids IP fragmentation on nearly every path.
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// The size of a UDP response without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// Largest DNS message (the TCP length prefix is 16 bits).
pub const MAX_MESSAGE: usize = 65_535;
/// Length of the DNS header.
const HEADER_LEN: usize = 12;

const TYPE_A: u16 = 1;
const TYPE_NS: u16 = 2;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_HINFO: u16 = 13;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_TKEY: u16 = 249;
const TYPE_TSIG: u16 = 250;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_MAILB: u16 = 253;
const TYPE_MAILA: u16 = 254;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const EDNS_CLIENT_SUBNET: u16 = 8;

/// The response codes this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// 0
    NoError,
    /// 1: the query could not be understood.
    FormErr,
    /// 3: the name does not exist in the zone.
    NxDomain,
    /// 4: an opcode other than QUERY.
    NotImp,
    /// 5: not our zone, not class IN, or a zone transfer.
    Refused,
    /// 16 (extended, in the OPT): an EDNS version above 0.
    BadVers,
}

impl Rcode {
    /// The 12-bit code.
    pub fn code(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }

    /// Its mnemonic (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }
}

/// How the query came: UDP responses are bounded by the payload size, TCP ones by 65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A length-prefixed message on a TCP connection (RFC 7766).
    Tcp,
}

/// Why a query got no response at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a DNS header: nothing to address a response to.
    Short,
    /// A response (QR=1): answering responses lets two servers loop.
    Response,
}

impl Dropped {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Short => "short",
            Dropped::Response => "response",
        }
    }
}

/// A steered answer, for the answers metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteeredAnswer {
    /// The service (index into the steering's services).
    pub service: usize,
    /// The POP whose addresses were given (none for a fallback).
    pub pop: Option<usize>,
    /// Where the answer came from.
    pub source: Source,
}

/// What was sent, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The response code.
    pub rcode: Rcode,
    /// The question's type (0 when the question could not be read).
    pub qtype: u16,
    /// The steered answer, for A/AAAA/ANY/CNAME at a service name.
    pub steered: Option<SteeredAnswer>,
    /// TC was set: the records did not fit.
    pub truncated: bool,
    /// NOERROR with nothing in the answer section (NODATA; not set when truncated).
    pub nodata: bool,
    /// An address query (A, AAAA, ANY) for a service's name that got neither an address nor
    /// a CNAME, and the service had none to give in the other family either: the
    /// never-empty guarantee broken (a bug; counted so that a rollout's gate catches it).
    pub empty: bool,
}

/// The result of [`answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response is in the buffer.
    Reply(Reply),
    /// Nothing to send; the buffer is empty.
    Drop(Dropped),
}

/// A name's wire form, prepared once per zone version so that answers only copy bytes.
#[derive(Debug, Clone)]
struct WireName {
    /// The labels before the zone's when the name is in the zone (empty for the apex);
    /// written followed by a pointer to the zone's labels in the question.
    in_zone: Option<Vec<u8>>,
    /// The whole name, uncompressed (used when no pointer is available).
    full: Vec<u8>,
}

impl WireName {
    fn new(name: &Name, zone: &Name) -> WireName {
        let full = wire(name.iter());
        let in_zone = if zone.zone_of(name) {
            let keep = usize::from(name.num_labels().saturating_sub(zone.num_labels()));
            let mut prefix = wire(name.iter().take(keep));
            prefix.pop(); // the root label: the pointer ends the name instead
            Some(prefix)
        } else {
            None
        };
        WireName { in_zone, full }
    }

    fn emit(&self, enc: &mut BinEncoder<'_>, zone_at: Option<u16>) -> Result<(), ProtoError> {
        match (&self.in_zone, zone_at) {
            (Some(prefix), Some(at)) => {
                enc.emit_vec(prefix)?;
                enc.emit_u16(0xC000 | at)
            }
            _ => enc.emit_vec(&self.full),
        }
    }
}

/// Uncompressed wire form of labels, with the root label.
fn wire<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for label in labels {
        // Labels of a parsed `Name` are at most 63 bytes.
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// Length of a name's uncompressed wire form.
fn wire_len(name: &Name) -> usize {
    name.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

/// One compiled version of the DNS data as served: the [`Steering`] and the wire forms of
/// its fixed records (SOA, NS), built once when the version is loaded.
pub struct Zone {
    steering: Steering,
    apex_len: usize,
    soa_mname: WireName,
    soa_rname: WireName,
    soa_fixed: [u8; 20],
    ns: Vec<WireName>,
    /// Whether any name server needs glue (is in the zone and has addresses).
    has_glue: bool,
}

impl Zone {
    /// Prepares `steering` for serving.
    pub fn new(steering: Steering) -> Zone {
        let zone = steering.zone().clone();
        let soa = steering.soa();
        let mut soa_fixed = [0u8; 20];
        for (chunk, v) in soa_fixed.chunks_exact_mut(4).zip([
            soa.serial,
            soa.refresh as u32,
            soa.retry as u32,
            soa.expire as u32,
            soa.minimum,
        ]) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        let ns: Vec<WireName> = steering
            .name_servers()
            .iter()
            .map(|n| WireName::new(&n.name, &zone))
            .collect();
        let has_glue = steering
            .name_servers()
            .iter()
            .any(|n| zone.zone_of(&n.name) && !(n.v4.is_empty() && n.v6.is_empty()));
        Zone {
            apex_len: wire_len(&zone),
            soa_mname: WireName::new(&soa.mname, &zone),
            soa_rname: WireName::new(&soa.rname, &zone),
            soa_fixed,
            ns,
            has_glue,
            steering,
        }
    }

    /// The steering data.
    pub fn steering(&self) -> &Steering {
        &self.steering
    }
}

/// The header fields a response copies.
#[derive(Clone, Copy)]
struct Head {
    id: u16,
    opcode: u8,
    rd: bool,
    cd: bool,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

fn read_head(query: &[u8]) -> Option<Head> {
    let h: &[u8; HEADER_LEN] = query.get(..HEADER_LEN)?.try_into().ok()?;
    let [id0, id1, f1, f2, qd0, qd1, an0, an1, ns0, ns1, ar0, ar1] = *h;
    if f1 & 0x80 != 0 {
        return None;
    }
    Some(Head {
        id: u16::from_be_bytes([id0, id1]),
        opcode: (f1 >> 3) & 0x0F,
        rd: f1 & 0x01 != 0,
        cd: f2 & 0x10 != 0,
        qdcount: u16::from_be_bytes([qd0, qd1]),
        ancount: u16::from_be_bytes([an0, an1]),
        nscount: u16::from_be_bytes([ns0, ns1]),
        arcount: u16::from_be_bytes([ar0, ar1]),
    })
}

/// The EDNS Client Subnet option of a query (RFC 7871 §6).
#[derive(Clone, Copy, Debug)]
struct Ecs<'q> {
    family: u16,
    source: u8,
    /// The address bytes as sent (ceil(source/8) of them).
    raw: &'q [u8],
    addr: IpAddr,
}

/// The OPT record of a query.
#[derive(Clone, Copy, Debug, Default)]
struct EdnsIn<'q> {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
    ecs: Option<Ecs<'q>>,
}

/// Why a query is answered FORMERR.
#[derive(Debug)]
enum Malformed {
    /// Nothing past the header is usable: FORMERR without a question.
    Question,
    /// The question is fine, the rest is not: FORMERR with the question, no OPT.
    Records,
    /// The OPT is fine but its Client Subnet is not: FORMERR with an OPT (this one,
    /// without the option).
    Ecs(EdnsIn<'static>),
}

struct Query<'q> {
    head: Head,
    qname: Name,
    qtype: u16,
    qclass: u16,
    edns: Option<EdnsIn<'q>>,
}

/// Skips a name without following pointers (a pointer ends a name).
fn skip_name(dec: &mut BinDecoder<'_>) -> Option<()> {
    // A name has at most 127 labels; more means garbage.
    for _ in 0..128 {
        let len = dec.read_u8().ok()?.unverified();
        match len {
            0 => return Some(()),
            l if l & 0xC0 == 0xC0 => {
                dec.read_u8().ok()?;
                return Some(());
            }
            l if l & 0xC0 == 0 => {
                dec.read_slice(usize::from(l)).ok()?;
            }
            _ => return None,
        }
    }
    None
}

/// Skips one resource record; returns its type and its RDATA when it is an OPT at the root.
fn read_record<'q>(dec: &mut BinDecoder<'q>) -> Option<(u16, bool, u16, u32, &'q [u8])> {
    let root = dec.peek().map(|b| b.unverified()) == Some(0);
    skip_name(dec)?;
    let rtype = dec.read_u16().ok()?.unverified();
    let class = dec.read_u16().ok()?.unverified();
    let ttl = dec.read_u32().ok()?.unverified();
    let len = dec.read_u16().ok()?.unverified();
    let rdata = dec.read_slice(usize::from(len)).ok()?.unverified();
    Some((rtype, root, class, ttl, rdata))
}

fn parse(query: &[u8], head: Head) -> Result<Query<'_>, Malformed> {
    let mut dec = BinDecoder::new(query);
    dec.read_slice(HEADER_LEN)
        .map_err(|_| Malformed::Question)?;
    let qname = Name::read(&mut dec).map_err(|_| Malformed::Question)?;
    let qtype = dec
        .read_u16()
        .map_err(|_| Malformed::Question)?
        .unverified();
    let qclass = dec
        .read_u16()
        .map_err(|_| Malformed::Question)?
        .unverified();
    let mut q = Query {
        head,
        qname,
        qtype,
        qclass,
        edns: None,
    };
    // Every record is at least 11 bytes, so the counts are bounded by the length read.
    let skipped = u32::from(head.ancount) + u32::from(head.nscount);
    for _ in 0..skipped {
        read_record(&mut dec).ok_or(Malformed::Records)?;
    }
    for _ in 0..head.arcount {
        let (rtype, root, class, ttl, rdata) = read_record(&mut dec).ok_or(Malformed::Records)?;
        if rtype != TYPE_OPT {
            continue;
        }
        // RFC 6891 §6.1.1: one OPT, owned by the root.
        if q.edns.is_some() || !root {
            return Err(Malformed::Records);
        }
        let [_, version, flags, _] = ttl.to_be_bytes();
        let mut edns = EdnsIn {
            payload: class,
            version,
            dnssec_ok: flags & 0x80 != 0,
            ecs: None,
        };
        edns.ecs = read_options(rdata).map_err(|e| match e {
            Malformed::Ecs(_) => Malformed::Ecs(EdnsIn {
                payload: edns.payload,
                version: edns.version,
                dnssec_ok: edns.dnssec_ok,
                ecs: None,
            }),
            other => other,
        })?;
        q.edns = Some(edns);
    }
    Ok(q)
}

/// Reads the OPT's options: only Client Subnet matters, the others are skipped.
fn read_options(rdata: &[u8]) -> Result<Option<Ecs<'_>>, Malformed> {
    let mut dec = BinDecoder::new(rdata);
    let mut ecs = None;
    while !dec.is_empty() {
        let code = dec.read_u16().map_err(|_| Malformed::Records)?.unverified();
        let len = dec.read_u16().map_err(|_| Malformed::Records)?.unverified();
        let data = dec
            .read_slice(usize::from(len))
            .map_err(|_| Malformed::Records)?
            .unverified();
        if code == EDNS_CLIENT_SUBNET {
            let bad = || Malformed::Ecs(EdnsIn::default());
            if ecs.is_some() {
                return Err(bad());
            }
            ecs = Some(read_ecs(data).ok_or_else(bad)?);
        }
    }
    Ok(ecs)
}

/// RFC 7871 §6 and §7.1.2: family 1 or 2, source prefix within the family, exactly
/// ceil(source/8) address bytes, no bit set beyond the source prefix.
fn read_ecs(data: &[u8]) -> Option<Ecs<'_>> {
    let (head, raw) = data.split_first_chunk::<4>()?;
    let [f0, f1, source, _scope] = *head;
    let family = u16::from_be_bytes([f0, f1]);
    let max_bits = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max_bits || raw.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    if let Some(last) = raw.last() {
        let used = source % 8;
        if used != 0 && last & (0xFF >> used) != 0 {
            return None;
        }
    }
    let mut bytes = [0u8; 16];
    bytes.get_mut(..raw.len())?.copy_from_slice(raw);
    let addr = if family == 1 {
        let [a, b, c, d, ..] = bytes;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    Some(Ecs {
        family,
        source,
        raw,
        addr,
    })
}

/// What goes in the response, decided before anything is written (so that a response
/// that does not fit can be redone as a truncated one with the same code).
enum Plan<'z> {
    /// Header (and question) only.
    Bare(Rcode),
    /// NXDOMAIN: SOA in AUTHORITY.
    NxDomain,
    /// NOERROR, no answer, SOA in AUTHORITY.
    NoData,
    /// The SOA.
    Soa,
    /// The NS RRset and glue.
    Ns,
    /// A or AAAA records owned by the question name.
    Addrs { addrs: &'z [IpAddr], ttl: u32 },
    /// A CNAME owned by the question name.
    Cname(&'z Name),
    /// The A records of name server `i` (owned by the question name).
    Glue4(usize),
    /// The AAAA records of name server `i`.
    Glue6(usize),
    /// RFC 8482's HINFO for ANY.
    Hinfo,
}

/// Answers `query` (from `src`, over `transport`) from `zone` into `out` (cleared first;
/// its capacity is reused). Never panics; every size is bounded by the query's length and
/// the zone's data.
pub fn answer(
    zone: &Zone,
    query: &[u8],
    src: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    if query.len() < HEADER_LEN {
        return Outcome::Drop(Dropped::Short);
    }
    let Some(head) = read_head(query) else {
        return Outcome::Drop(Dropped::Response);
    };
    if head.opcode != 0 {
        return bare(out, head, Rcode::NotImp);
    }
    if head.qdcount != 1 {
        return bare(out, head, Rcode::FormErr);
    }
    let q = match parse(query, head) {
        Ok(q) => q,
        Err(Malformed::Question) => return bare(out, head, Rcode::FormErr),
        Err(Malformed::Records) => {
            let q = parse_question_only(query, head);
            return match q {
                Some(q) => respond(
                    zone,
                    &q,
                    Plan::Bare(Rcode::FormErr),
                    (None, 0),
                    transport,
                    out,
                ),
                None => bare(out, head, Rcode::FormErr),
            };
        }
        Err(Malformed::Ecs(edns)) => {
            let Some(mut q) = parse_question_only(query, head) else {
                return bare(out, head, Rcode::FormErr);
            };
            // Answer with the client's OPT (it speaks EDNS) but without the bad option.
            q.edns = Some(edns);
            return respond(
                zone,
                &q,
                Plan::Bare(Rcode::FormErr),
                (None, 0),
                transport,
                out,
            );
        }
    };
    let (plan, steered, scope) = plan(zone, &q, src);
    let empty = is_empty(zone, &q, src, &plan);
    let outcome = respond(zone, &q, plan, (steered, scope), transport, out);
    match outcome {
        Outcome::Reply(r) if empty => Outcome::Reply(Reply { empty, ..r }),
        other => other,
    }
}

/// Whether `plan` answers an address query for a service's name with nothing although the
/// name is a service's: neither family has an address or a CNAME for this client. Only
/// NODATA and HINFO plans (rare) are looked at again, so the common answers cost nothing.
fn is_empty(zone: &Zone, q: &Query<'_>, src: IpAddr, plan: &Plan<'_>) -> bool {
    if !matches!(q.qtype, TYPE_A | TYPE_AAAA | TYPE_ANY)
        || !matches!(plan, Plan::NoData | Plan::Hinfo)
    {
        return false;
    }
    let steering = &zone.steering;
    let crate::steer::Lookup::Service(s) = steering.owner(&q.qname) else {
        return false;
    };
    let client = client(q, src);
    [Family::V4, Family::V6]
        .iter()
        .all(|f| matches!(steering.steer(s, client, *f), Steered::NoData { .. }))
}

fn parse_question_only(query: &[u8], head: Head) -> Option<Query<'_>> {
    let mut dec = BinDecoder::new(query);
    dec.read_slice(HEADER_LEN).ok()?;
    let qname = Name::read(&mut dec).ok()?;
    let qtype = dec.read_u16().ok()?.unverified();
    let qclass = dec.read_u16().ok()?.unverified();
    Some(Query {
        head,
        qname,
        qtype,
        qclass,
        edns: None,
    })
}

/// Decides the response: its plan, the steered answer (for metrics) and the ECS scope.
fn plan<'z>(zone: &'z Zone, q: &Query<'_>, src: IpAddr) -> (Plan<'z>, Option<SteeredAnswer>, u8) {
    if let Some(e) = q.edns {
        if e.version > 0 {
            return (Plan::Bare(Rcode::BadVers), None, 0);
        }
    }
    if q.qclass != CLASS_IN {
        return (Plan::Bare(Rcode::Refused), None, 0);
    }
    match q.qtype {
        TYPE_OPT | TYPE_TSIG | TYPE_TKEY => return (Plan::Bare(Rcode::FormErr), None, 0),
        TYPE_MAILA | TYPE_MAILB => return (Plan::Bare(Rcode::NotImp), None, 0),
        TYPE_AXFR | TYPE_IXFR => return (Plan::Bare(Rcode::Refused), None, 0),
        _ => {}
    }
    let steering = &zone.steering;
    use crate::steer::Lookup;
    match steering.owner(&q.qname) {
        Lookup::OutOfZone => (Plan::Bare(Rcode::Refused), None, 0),
        Lookup::NoSuchName => (Plan::NxDomain, None, 0),
        // A name that exists only through names below it (RFC 8020): NODATA, whatever the type.
        Lookup::EmptyNonTerminal => (Plan::NoData, None, 0),
        Lookup::Apex => {
            let p = match q.qtype {
                TYPE_SOA | TYPE_ANY => Plan::Soa,
                TYPE_NS => Plan::Ns,
                _ => Plan::NoData,
            };
            (p, None, 0)
        }
        Lookup::NameServer(i) => {
            let Some(ns) = steering.name_servers().get(i) else {
                return (Plan::NxDomain, None, 0);
            };
            let p = match q.qtype {
                TYPE_A if !ns.v4.is_empty() => Plan::Glue4(i),
                TYPE_AAAA if !ns.v6.is_empty() => Plan::Glue6(i),
                TYPE_ANY if !ns.v4.is_empty() => Plan::Glue4(i),
                TYPE_ANY if !ns.v6.is_empty() => Plan::Glue6(i),
                TYPE_ANY => Plan::Hinfo,
                _ => Plan::NoData,
            };
            (p, None, 0)
        }
        Lookup::Service(s) => service(steering, s, q, src),
    }
}

/// The client steering decides on: the ECS address and source prefix when the query has a
/// usable one (source prefix above 0), else the address the query came from.
fn client(q: &Query<'_>, src: IpAddr) -> Client {
    if let Some(ecs) = q.edns.and_then(|e| e.ecs).filter(|e| e.source > 0) {
        return Client {
            addr: ecs.addr,
            source_prefix: ecs.source,
        };
    }
    Client::from_addr(src)
}

fn service<'z>(
    steering: &'z Steering,
    s: usize,
    q: &Query<'_>,
    src: IpAddr,
) -> (Plan<'z>, Option<SteeredAnswer>, u8) {
    let client = client(q, src);
    let family = match q.qtype {
        TYPE_AAAA => Family::V6,
        _ => Family::V4,
    };
    let first = steering.steer(s, client, family);
    let (plan, steered, scope) = steered_plan(steering, s, first);
    match q.qtype {
        TYPE_A | TYPE_AAAA => (plan, steered, scope),
        TYPE_ANY => match plan {
            Plan::NoData => {
                // No IPv4 answer: the IPv6 one, else HINFO (RFC 8482 §4.2).
                let v6 = steering.steer(s, client, Family::V6);
                match steered_plan(steering, s, v6) {
                    (Plan::NoData, _, scope) => (Plan::Hinfo, None, scope),
                    other => other,
                }
            }
            other => (other, steered, scope),
        },
        // A name with a CNAME has no other data: every type gets the CNAME.
        _ => match plan {
            Plan::Cname(_) => (plan, steered, scope),
            _ => (Plan::NoData, None, scope),
        },
    }
}

fn steered_plan<'z>(
    steering: &'z Steering,
    service: usize,
    s: Steered<'z>,
) -> (Plan<'z>, Option<SteeredAnswer>, u8) {
    match s {
        Steered::Addrs {
            addrs,
            pop,
            source,
            scope,
        } => (
            Plan::Addrs {
                addrs,
                ttl: steering.ttl(),
            },
            Some(SteeredAnswer {
                service,
                pop,
                source,
            }),
            scope,
        ),
        Steered::Cname { target, scope } => (
            Plan::Cname(target),
            Some(SteeredAnswer {
                service,
                pop: None,
                source: Source::Fallback,
            }),
            scope,
        ),
        Steered::NoData { scope } => (Plan::NoData, None, scope),
    }
}

impl Plan<'_> {
    fn rcode(&self) -> Rcode {
        match self {
            Plan::Bare(r) => *r,
            Plan::NxDomain => Rcode::NxDomain,
            _ => Rcode::NoError,
        }
    }
}

/// A header-only response (no question): for queries whose question cannot be used.
fn bare(out: &mut Vec<u8>, head: Head, rcode: Rcode) -> Outcome {
    out.clear();
    let [i0, i1] = head.id.to_be_bytes();
    out.extend_from_slice(&[
        i0,
        i1,
        flags1(head, false, false),
        flags2(head, rcode),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    Outcome::Reply(Reply {
        rcode,
        qtype: 0,
        steered: None,
        truncated: false,
        nodata: false,
        empty: false,
    })
}

fn flags1(head: Head, aa: bool, tc: bool) -> u8 {
    0x80 | (head.opcode << 3) | (u8::from(aa) << 2) | (u8::from(tc) << 1) | u8::from(head.rd)
}

fn flags2(head: Head, rcode: Rcode) -> u8 {
    // RA = 0 (not recursive), AD = 0 (not signed), CD copied (RFC 4035 §3.1.6).
    (u8::from(head.cd) << 4) | (rcode.code() & 0x0F) as u8
}

/// Where a record's owner name is.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// A compression pointer (the question name: offset 12).
    At(u16),
    /// A prepared name.
    Name(&'a WireName, Option<u16>),
}

const QUESTION_AT: u16 = HEADER_LEN as u16;

fn record(
    enc: &mut BinEncoder<'_>,
    owner: Owner<'_>,
    rtype: u16,
    ttl: u32,
    rdata: impl FnOnce(&mut BinEncoder<'_>) -> Result<(), ProtoError>,
) -> Result<(), ProtoError> {
    match owner {
        Owner::At(at) => enc.emit_u16(0xC000 | at)?,
        Owner::Name(n, zone_at) => n.emit(enc, zone_at)?,
    }
    enc.emit_u16(rtype)?;
    enc.emit_u16(CLASS_IN)?;
    enc.emit_u32(ttl)?;
    let place = enc.place::<u16>()?;
    rdata(enc)?;
    let len = enc.len_since_place(&place);
    place.replace(enc, u16::try_from(len).unwrap_or(u16::MAX))
}

fn address(
    enc: &mut BinEncoder<'_>,
    owner: Owner<'_>,
    ttl: u32,
    a: IpAddr,
) -> Result<(), ProtoError> {
    match a {
        IpAddr::V4(v4) => record(enc, owner, TYPE_A, ttl, |e| e.emit_vec(&v4.octets())),
        IpAddr::V6(v6) => record(enc, owner, TYPE_AAAA, ttl, |e| e.emit_vec(&v6.octets())),
    }
}

fn name_labels(enc: &mut BinEncoder<'_>, name: &Name) -> Result<(), ProtoError> {
    for label in name.iter() {
        enc.emit(u8::try_from(label.len()).unwrap_or(63))?;
        enc.emit_vec(label)?;
    }
    enc.emit(0)
}

/// Record counts of the three sections written.
#[derive(Default, Clone, Copy)]
struct Counts {
    an: u16,
    ns: u16,
    ar: u16,
}

fn soa(
    zone: &Zone,
    enc: &mut BinEncoder<'_>,
    zone_at: Option<u16>,
    ttl: u32,
) -> Result<(), ProtoError> {
    // Names in the zone end with the zone's labels, so the pointer is always there; without
    // it the response is dropped to a truncated one rather than written wrong.
    let Some(at) = zone_at else {
        return Err(ProtoError::from("no apex pointer"));
    };
    let owner = Owner::At(at);
    record(enc, owner, TYPE_SOA, ttl, |e| {
        zone.soa_mname.emit(e, zone_at)?;
        zone.soa_rname.emit(e, zone_at)?;
        e.emit_vec(&zone.soa_fixed)
    })
}

fn records(
    zone: &Zone,
    plan: &Plan<'_>,
    enc: &mut BinEncoder<'_>,
    zone_at: Option<u16>,
) -> Result<Counts, ProtoError> {
    let st = &zone.steering;
    let mut c = Counts::default();
    let here = Owner::At(QUESTION_AT);
    match plan {
        Plan::Bare(_) => {}
        Plan::NxDomain | Plan::NoData => {
            soa(zone, enc, zone_at, st.negative_ttl())?;
            c.ns = 1;
        }
        Plan::Soa => {
            soa(zone, enc, zone_at, st.zone_ttl())?;
            c.an = 1;
        }
        Plan::Ns => {
            let Some(apex) = zone_at else {
                return Err(ProtoError::from("no apex pointer"));
            };
            for n in &zone.ns {
                record(enc, Owner::At(apex), TYPE_NS, st.zone_ttl(), |e| {
                    n.emit(e, zone_at)
                })?;
                c.an = c.an.saturating_add(1);
            }
            if zone.has_glue {
                for (wire, ns) in zone.ns.iter().zip(st.name_servers()) {
                    if wire.in_zone.is_none() {
                        continue;
                    }
                    let owner = Owner::Name(wire, zone_at);
                    for a in ns
                        .v4
                        .iter()
                        .map(|a| IpAddr::V4(*a))
                        .chain(ns.v6.iter().map(|a| IpAddr::V6(*a)))
                    {
                        address(enc, owner, st.zone_ttl(), a)?;
                        c.ar = c.ar.saturating_add(1);
                    }
                }
            }
        }
        Plan::Glue4(i) | Plan::Glue6(i) => {
            if let Some(ns) = st.name_servers().get(*i) {
                if matches!(plan, Plan::Glue4(_)) {
                    for a in &ns.v4 {
                        address(enc, here, st.zone_ttl(), IpAddr::V4(*a))?;
                        c.an = c.an.saturating_add(1);
                    }
                } else {
                    for a in &ns.v6 {
                        address(enc, here, st.zone_ttl(), IpAddr::V6(*a))?;
                        c.an = c.an.saturating_add(1);
                    }
                }
            }
        }
        Plan::Addrs { addrs, ttl } => {
            for a in addrs.iter() {
                address(enc, here, *ttl, *a)?;
                c.an = c.an.saturating_add(1);
            }
        }
        Plan::Cname(target) => {
            record(enc, here, TYPE_CNAME, st.ttl(), |e| name_labels(e, target))?;
            c.an = 1;
        }
        Plan::Hinfo => {
            record(enc, here, TYPE_HINFO, st.ttl(), |e| {
                e.emit_character_data("RFC8482")?;
                e.emit_character_data("")
            })?;
            c.an = 1;
        }
    }
    Ok(c)
}

fn opt_len(e: &EdnsIn<'_>) -> usize {
    11 + e.ecs.map(|ecs| 8 + ecs.raw.len()).unwrap_or(0)
}

fn opt(
    enc: &mut BinEncoder<'_>,
    e: &EdnsIn<'_>,
    rcode: Rcode,
    scope: u8,
) -> Result<(), ProtoError> {
    enc.emit(0)?;
    enc.emit_u16(TYPE_OPT)?;
    enc.emit_u16(OUR_UDP_PAYLOAD)?;
    let ext = (rcode.code() >> 4) as u8;
    enc.emit_vec(&[ext, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0])?;
    let place = enc.place::<u16>()?;
    if let Some(ecs) = e.ecs {
        let max = if ecs.family == 1 { 32 } else { 128 };
        // A source prefix of 0 asks for an answer valid for every client (RFC 7871 §7.2.1).
        let scope = if ecs.source == 0 { 0 } else { scope.min(max) };
        enc.emit_u16(EDNS_CLIENT_SUBNET)?;
        enc.emit_u16(u16::try_from(4 + ecs.raw.len()).unwrap_or(u16::MAX))?;
        enc.emit_u16(ecs.family)?;
        enc.emit(ecs.source)?;
        enc.emit(scope)?;
        enc.emit_vec(ecs.raw)?;
    }
    let len = enc.len_since_place(&place);
    place.replace(enc, u16::try_from(len).unwrap_or(u16::MAX))
}

fn respond(
    zone: &Zone,
    q: &Query<'_>,
    plan: Plan<'_>,
    (steered, scope): (Option<SteeredAnswer>, u8),
    transport: Transport,
    out: &mut Vec<u8>,
) -> Outcome {
    let limit = match (transport, q.edns) {
        (Transport::Tcp, _) => MAX_MESSAGE,
        (Transport::Udp, None) => usize::from(CLASSIC_UDP_PAYLOAD),
        (Transport::Udp, Some(e)) => {
            usize::from(e.payload.clamp(CLASSIC_UDP_PAYLOAD, OUR_UDP_PAYLOAD))
        }
    };
    let rcode = plan.rcode();
    let aa = matches!(
        plan,
        Plan::NxDomain
            | Plan::NoData
            | Plan::Soa
            | Plan::Ns
            | Plan::Addrs { .. }
            | Plan::Cname(_)
            | Plan::Hinfo
            | Plan::Glue4(_)
            | Plan::Glue6(_)
    );
    let qlen = wire_len(&q.qname);
    let zone_at = (HEADER_LEN + qlen)
        .checked_sub(zone.apex_len)
        .filter(|at| *at >= HEADER_LEN)
        .and_then(|at| u16::try_from(at).ok());
    let head = q.head;
    out.clear();
    let mut enc = BinEncoder::new(out);
    let [i0, i1] = head.id.to_be_bytes();
    let written = (|| -> Result<usize, ProtoError> {
        enc.emit_vec(&[
            i0,
            i1,
            flags1(head, aa, false),
            flags2(head, rcode),
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        ])?;
        name_labels(&mut enc, &q.qname)?;
        enc.emit_u16(q.qtype)?;
        enc.emit_u16(q.qclass)?;
        Ok(enc.offset())
    })();
    let Ok(question_end) = written else {
        return bare(out, head, rcode);
    };
    let opt_room = q.edns.as_ref().map(opt_len).unwrap_or(0);
    enc.set_max_size(u16::try_from(limit.saturating_sub(opt_room)).unwrap_or(u16::MAX));
    let (counts, truncated) = match records(zone, &plan, &mut enc, zone_at) {
        Ok(c) => (c, false),
        Err(_) => {
            enc.set_offset(question_end);
            enc.trim();
            (Counts::default(), true)
        }
    };
    enc.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
    let mut ar = counts.ar;
    if let Some(e) = &q.edns {
        if opt(&mut enc, e, rcode, scope).is_ok() {
            ar = ar.saturating_add(1);
        } else {
            enc.set_offset(question_end);
            enc.trim();
        }
    }
    drop(enc);
    if let Some(f) = out.get_mut(2) {
        *f = flags1(head, aa, truncated);
    }
    let [a0, a1] = counts.an.to_be_bytes();
    let [n0, n1] = counts.ns.to_be_bytes();
    let [r0, r1] = ar.to_be_bytes();
    if let Some(c) = out.get_mut(6..HEADER_LEN) {
        c.copy_from_slice(&[a0, a1, n0, n1, r0, r1]);
    }
    Outcome::Reply(Reply {
        rcode,
        qtype: q.qtype,
        steered: if truncated { None } else { steered },
        truncated,
        nodata: rcode == Rcode::NoError && counts.an == 0 && !truncated,
        empty: false,
    })
}

#[cfg(test)]
#[path = "answer_tests.rs"]
pub(crate) mod tests;
