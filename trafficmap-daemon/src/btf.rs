//! A minimal reader of kernel BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and function
//! parameter counts. aya's `Btf` does not expose type look-ups, and the probe needs both: offsets
//! of `struct sock_common` fields (passed to the probe as constants, since aya-ebpf has no CO-RE
//! for Rust structs) and the arity of `tcp_recvmsg` (which changed in 5.19).
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic {0:#06x})")]
    BadMagic(u16),
    #[error("BTF data truncated: {0}")]
    Truncated(&'static str),
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("kernel BTF has no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
    #[error("`{container}` has no member `{member}` in kernel BTF")]
    NoMember { container: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset (bitfield size stripped).
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for modifiers, typedefs, pointers and functions.
    ty: u32,
    members: Vec<Member>,
    /// Number of parameters of a FUNC_PROTO.
    params: usize,
}

/// Kernel BTF, decoded lazily: only the offset of each type record is kept, and a look-up
/// decodes the few records it visits. vmlinux has over 100,000 types; a fully decoded copy
/// would dominate the agent's memory for a handful of look-ups at start.
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    big: bool,
    /// Byte offset of each type record in `types`, by type id (id 0, `void`, has none).
    offsets: Vec<u32>,
}

fn u16_at(d: &[u8], off: usize, big: bool) -> Result<u16, BtfError> {
    let b: [u8; 2] = d
        .get(off..off + 2)
        .ok_or(BtfError::Truncated("u16"))?
        .try_into()
        .map_err(|_| BtfError::Truncated("u16"))?;
    Ok(if big {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

fn u32_at(d: &[u8], off: usize, big: bool) -> Result<u32, BtfError> {
    let b: [u8; 4] = d
        .get(off..off + 4)
        .ok_or(BtfError::Truncated("u32"))?
        .try_into()
        .map_err(|_| BtfError::Truncated("u32"))?;
    Ok(if big {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

/// Bytes of kind-specific data after the 12-byte common header.
fn extra_len(kind: u32, vlen: usize, id: u32) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        kind => return Err(BtfError::UnknownKind { kind, id }),
    })
}

impl Btf {
    pub fn from_sys_fs() -> std::io::Result<Result<Self, BtfError>> {
        Ok(Self::parse(&std::fs::read("/sys/kernel/btf/vmlinux")?))
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic_le = u16_at(data, 0, false)?;
        let big = match magic_le {
            0xeb9f => false,
            0x9feb => true,
            other => return Err(BtfError::BadMagic(other)),
        };
        let hdr_len = u32_at(data, 4, big)? as usize;
        let type_off = u32_at(data, 8, big)? as usize;
        let type_len = u32_at(data, 12, big)? as usize;
        let str_off = u32_at(data, 16, big)? as usize;
        let str_len = u32_at(data, 20, big)? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated("type section"))?
            .to_vec();
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated("string section"))?
            .to_vec();
        let mut offsets = vec![0u32];
        let mut pos = 0;
        while pos < types.len() {
            let id = offsets.len() as u32;
            let info = u32_at(&types, pos + 4, big)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            offsets.push(pos as u32);
            pos = pos.saturating_add(12 + extra_len(kind, vlen, id)?);
        }
        if pos != types.len() {
            return Err(BtfError::Truncated("last type"));
        }
        Ok(Btf {
            types,
            strings,
            big,
            offsets,
        })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// (name offset, kind, size_or_type, vlen) of a type record, without decoding members.
    fn header(&self, id: u32) -> (u32, u32, u32, usize) {
        let pos = self.offsets[id as usize] as usize;
        let d = &self.types;
        // Offsets were validated by `parse`, so these reads are in bounds.
        let name = u32_at(d, pos, self.big).unwrap_or(0);
        let info = u32_at(d, pos + 4, self.big).unwrap_or(0);
        let sz = u32_at(d, pos + 8, self.big).unwrap_or(0);
        (name, (info >> 24) & 0x1f, sz, (info & 0xffff) as usize)
    }

    fn get(&self, id: u32) -> Type {
        if id == 0 || id as usize >= self.offsets.len() {
            return Type {
                name: 0,
                kind: 0,
                ty: 0,
                members: Vec::new(),
                params: 0,
            };
        }
        let (name, kind, ty, vlen) = self.header(id);
        let pos = self.offsets[id as usize] as usize + 12;
        let kind_flag = u32_at(&self.types, pos - 8, self.big).unwrap_or(0) >> 31 == 1;
        let mut members = Vec::new();
        let mut params = 0;
        match kind {
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let m = pos + i * 12;
                    let raw = u32_at(&self.types, m + 8, self.big).unwrap_or(0);
                    members.push(Member {
                        name: u32_at(&self.types, m, self.big).unwrap_or(0),
                        ty: u32_at(&self.types, m + 4, self.big).unwrap_or(0),
                        // With kind_flag, the top 8 bits hold a bitfield's size.
                        bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                    });
                }
            }
            KIND_FUNC_PROTO => params = vlen,
            _ => {}
        }
        Type {
            name,
            kind,
            ty,
            members,
            params,
        }
    }

    /// First type of `kind` named `name` (a linear scan: done a few times at start).
    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        (1..self.offsets.len() as u32).find(|&id| {
            let (n, k, _, _) = self.header(id);
            k == kind && n != 0 && self.name(n) == name
        })
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Type {
        loop {
            let t = self.get(id);
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                _ => return t,
            }
        }
    }

    fn find_struct(&self, container: &str) -> Result<Type, BtfError> {
        self.find(container, KIND_STRUCT)
            .map(|id| self.get(id))
            .ok_or_else(|| BtfError::NotFound {
                kind: "struct",
                name: container.to_owned(),
            })
    }

    /// Byte offset of `member` in `struct container`, looking through anonymous structs and
    /// unions (as the kernel nests `skc_daddr` in an anonymous struct in a union).
    pub fn member_offset(&self, container: &str, member: &str) -> Result<u32, BtfError> {
        let t = self.find_struct(container)?;
        self.member_offset_in(&t, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                container: container.to_owned(),
                member: member.to_owned(),
            })
    }

    fn member_offset_in(&self, t: &Type, member: &str, base_bits: u32) -> Option<u32> {
        for m in &t.members {
            if m.name != 0 && self.name(m.name) == member {
                return Some(base_bits.saturating_add(m.bit_offset));
            }
        }
        for m in &t.members {
            if m.name == 0 {
                let inner = self.resolve(m.ty);
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(off) = self.member_offset_in(
                        &inner,
                        member,
                        base_bits.saturating_add(m.bit_offset),
                    )
                {
                    return Some(off);
                }
            }
        }
        None
    }

    /// Byte offset of a dotted path such as `ns.inum` in `struct net`.
    pub fn path_offset(&self, container: &str, path: &str) -> Result<u32, BtfError> {
        let mut current = container.to_owned();
        let mut total = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            total = self.member_offset(&current, part)?.saturating_add(total);
            if i + 1 < parts.len() {
                current = self.member_struct_name(&current, part)?;
            }
        }
        Ok(total)
    }

    fn member_struct_name(&self, container: &str, member: &str) -> Result<String, BtfError> {
        let t = self.find_struct(container)?;
        let no_member = || BtfError::NoMember {
            container: container.to_owned(),
            member: member.to_owned(),
        };
        let ty = self.member_type_in(&t, member).ok_or_else(no_member)?;
        let t = self.resolve(ty);
        if t.kind == KIND_STRUCT && t.name != 0 {
            Ok(self.name(t.name).to_owned())
        } else {
            Err(no_member())
        }
    }

    fn member_type_in(&self, t: &Type, member: &str) -> Option<u32> {
        for m in &t.members {
            if m.name != 0 && self.name(m.name) == member {
                return Some(m.ty);
            }
        }
        t.members.iter().filter(|m| m.name == 0).find_map(|m| {
            let inner = self.resolve(m.ty);
            matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                .then(|| self.member_type_in(&inner, member))
                .flatten()
        })
    }

    /// Arity of a raw tracepoint's prototype as BTF records it for BPF programs
    /// (`typedef void (*btf_trace_<name>)(void *, ...)`), context pointer included.
    pub fn raw_tracepoint_arity(&self, name: &str) -> Option<usize> {
        let id = self.find(&format!("btf_trace_{name}"), KIND_TYPEDEF)?;
        let ptr = self.get(self.get(id).ty);
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.get(ptr.ty);
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.params)
    }

    /// Whether the kernel has a function of this name (in vmlinux BTF).
    pub fn has_function(&self, name: &str) -> bool {
        self.find(name, KIND_FUNC).is_some()
    }

    /// Number of parameters of a kernel function.
    pub fn function_params(&self, name: &str) -> Result<usize, BtfError> {
        let id = self
            .find(name, KIND_FUNC)
            .ok_or_else(|| BtfError::NotFound {
                kind: "function",
                name: name.to_owned(),
            })?;
        Ok(self.get(self.get(id).ty).params)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds little-endian BTF blobs for tests.
    #[derive(Default)]
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn head(&mut self, name: &str, kind: u32, vlen: usize, kind_flag: bool, sz: u32) -> u32 {
            let n = self.str(name);
            let info = (kind << 24) | vlen as u32 | if kind_flag { 1 << 31 } else { 0 };
            for v in [n, info, sz] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }
        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, false, to)
        }
        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, false, to)
        }
        pub(crate) fn volatile(&mut self, to: u32) -> u32 {
            self.head("", KIND_VOLATILE, 0, false, to)
        }
        /// `members`: (name, type, byte offset)
        pub(crate) fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.head(name, kind, members.len(), true, size);
            for &(n, ty, off) in members {
                let n = self.str(n);
                for v in [n, ty, off * 8] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        pub(crate) fn strukt(&mut self, name: &str, size: u32, m: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, name, size, m)
        }
        pub(crate) fn union(&mut self, size: u32, m: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_UNION, "", size, m)
        }
        pub(crate) fn func_proto(&mut self, params: &[u32]) -> u32 {
            let proto = self.head("", KIND_FUNC_PROTO, params.len(), false, 0);
            for &p in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&p.to_le_bytes());
            }
            proto
        }
        pub(crate) fn func(&mut self, name: &str, params: &[u32]) -> u32 {
            let proto = self.func_proto(params);
            self.head(name, KIND_FUNC, 0, false, proto)
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.push(1);
            out.push(0);
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A kernel-like `struct sock_common` with the anonymous unions of the real one.
    pub(crate) fn kernel_like() -> Vec<u8> {
        let mut b = Builder::new();
        let u8t = b.int("unsigned char", 1);
        let u16t = b.int("u16", 2);
        let u32t = b.int("u32", 4);
        let be32 = b.typedef("__be32", u32t);
        let vol_u8 = b.volatile(u8t);
        let addrs = b.strukt("", 8, &[("skc_daddr", be32, 0), ("skc_rcv_saddr", be32, 4)]);
        let addrpair = b.union(8, &[("skc_addrpair", u32t, 0), ("", addrs, 0)]);
        let ports = b.strukt("", 4, &[("skc_dport", u16t, 0), ("skc_num", u16t, 2)]);
        let portpair = b.union(4, &[("skc_portpair", u32t, 0), ("", ports, 0)]);
        let ns_common = b.strukt("ns_common", 24, &[("stashed", u32t, 0), ("inum", u32t, 16)]);
        let net = b.strukt("net", 200, &[("passive", u32t, 0), ("ns", ns_common, 120)]);
        let net_ptr = b.ptr(net);
        let possible_net = b.strukt("", 8, &[("net", net_ptr, 0)]);
        let possible_net_t = b.typedef("possible_net_t", possible_net);
        let in6 = b.strukt("in6_addr", 16, &[]);
        let sock_common = b.strukt(
            "sock_common",
            136,
            &[
                ("", addrpair, 0),
                ("", portpair, 12),
                ("skc_family", u16t, 16),
                ("skc_state", vol_u8, 18),
                ("skc_net", possible_net_t, 48),
                ("skc_v6_daddr", in6, 56),
                ("skc_v6_rcv_saddr", in6, 72),
            ],
        );
        b.strukt("sock", 700, &[("__sk_common", sock_common, 0)]);
        let sk_ptr = b.ptr(sock_common);
        b.func("tcp_recvmsg", &[sk_ptr, u32t, u32t, u32t, u32t]);
        b.func("tcp_sendmsg", &[sk_ptr, u32t, u32t]);
        let proto = b.func_proto(&[sk_ptr, sk_ptr, u32t, u32t]);
        let proto_ptr = b.ptr(proto);
        b.typedef("btf_trace_sock_send_length", proto_ptr);
        b.build()
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&kernel_like()).unwrap();
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr").unwrap(),
            4
        );
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.member_offset("sock_common", "skc_state").unwrap(), 18);
        assert_eq!(
            btf.member_offset("sock_common", "skc_v6_rcv_saddr")
                .unwrap(),
            72
        );
        assert_eq!(btf.path_offset("net", "ns.inum").unwrap(), 136);
        assert_eq!(btf.member_offset("sock", "__sk_common").unwrap(), 0);
    }

    #[test]
    fn function_arity() {
        let btf = Btf::parse(&kernel_like()).unwrap();
        assert_eq!(btf.function_params("tcp_recvmsg").unwrap(), 5);
        assert_eq!(btf.function_params("tcp_sendmsg").unwrap(), 3);
        assert!(btf.has_function("tcp_sendmsg"));
        assert!(!btf.has_function("tcp_sendpage"));
        assert_eq!(btf.raw_tracepoint_arity("sock_send_length"), Some(4));
        assert_eq!(btf.raw_tracepoint_arity("sock_recv_length"), None);
    }

    #[test]
    fn clear_errors() {
        let btf = Btf::parse(&kernel_like()).unwrap();
        assert_eq!(
            btf.member_offset("sock_common", "skc_nope")
                .unwrap_err()
                .to_string(),
            "`sock_common` has no member `skc_nope` in kernel BTF"
        );
        assert_eq!(
            btf.function_params("tcp_nope").unwrap_err().to_string(),
            "kernel BTF has no function named `tcp_nope`"
        );
        assert_eq!(Btf::parse(&[0u8; 24]).err(), Some(BtfError::BadMagic(0)));
        let mut truncated = kernel_like();
        truncated.truncate(40);
        assert!(matches!(
            Btf::parse(&truncated),
            Err(BtfError::Truncated(_))
        ));
    }
}
