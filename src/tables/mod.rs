//! One definition per table: error codes, event kinds, worker states and
//! scheduling policies are each written once, in `tables.in.rs`, and every
//! layer derives from that file:
//!
//! - this module expands it into the Rust enums ([`Code`], [`EventKind`],
//!   [`WorkerState`], [`PolicyKind`]) with their numbers, C names and texts,
//!   and [`c`] into the C constants the FFI layer exports;
//! - `build.rs` expands the same file into the `#define`s of
//!   `include/rcluster.h` (cbindgen does not expand macros);
//! - the Python package reads the constants from the header (cffi), the Node
//!   addon takes the names from the enums here.
//!
//! The file is expanded with a different `table!` macro each time (the
//! "X macro" pattern), so nothing here lists a row again.

macro_rules! table {
    (
        $(#[doc = $type_doc:literal])*
        enum $type:ident: $what:literal, $text_fn:ident {
            $( $(#[doc = $doc:literal])* $variant:ident = $value:literal, $c_name:ident, $text:literal; )*
        }
    ) => {
        $(#[doc = $type_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(i32)]
        pub enum $type {
            $( $(#[doc = $doc])* $variant = $value, )*
        }

        impl $type {
            #[doc = concat!("Every one of the ", $what, ", in table order.")]
            pub const ALL: &'static [$type] = &[$($type::$variant),*];

            /// The number C sees.
            pub const fn raw(self) -> i32 {
                self as i32
            }

            /// From the number C sees; `None` for a number not in the table.
            pub const fn from_c(raw: i32) -> Option<$type> {
                match raw {
                    $($value => Some($type::$variant),)*
                    _ => None,
                }
            }

            /// The name of its C constant.
            pub const fn c_name(self) -> &'static str {
                match self {
                    $($type::$variant => stringify!($c_name),)*
                }
            }

            #[doc = concat!("Its ", stringify!($text_fn), ", as every binding shows it.")]
            pub const fn $text_fn(self) -> &'static str {
                match self {
                    $($type::$variant => $text,)*
                }
            }

            #[doc = concat!("The one whose ", stringify!($text_fn), " is `text`.")]
            pub fn find(text: &str) -> Option<$type> {
                Self::ALL.iter().copied().find(|item| item.$text_fn() == text)
            }
        }
    };
}

macro_rules! tables {
    ($(
        $(#[doc = $type_doc:literal])*
        enum $type:ident: $what:literal, $text_fn:ident {
            $( $(#[doc = $doc:literal])* $variant:ident = $value:literal, $c_name:ident, $text:literal; )*
        }
    )*) => {
        $(
            table! {
                $(#[doc = $type_doc])*
                enum $type: $what, $text_fn {
                    $( $(#[doc = $doc])* $variant = $value, $c_name, $text; )*
                }
            }
        )*
    };
}

include!("tables.in.rs");

/// The C constants (`RCLUSTER_E_*`, `RCLUSTER_EVENT_*`, `RCLUSTER_WORKER_*`,
/// `RCLUSTER_POLICY_*`), from the same table.
pub mod c {
    macro_rules! tables {
        ($(
            $(#[doc = $type_doc:literal])*
            enum $type:ident: $what:literal, $text_fn:ident {
                $( $(#[doc = $doc:literal])* $variant:ident = $value:literal, $c_name:ident, $text:literal; )*
            }
        )*) => {
            $($( $(#[doc = $doc])* pub const $c_name: std::ffi::c_int = $value; )*)*
        };
    }

    include!("tables.in.rs");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python and the header's readers take a name from its C constant: the
    /// text of every event, state and policy is that constant's suffix.
    #[test]
    fn names_are_the_c_suffix_in_lower_case() {
        fn check(c_name: &str, prefix: &str, name: &str) {
            assert_eq!(c_name.strip_prefix(prefix).unwrap().to_lowercase(), name, "{c_name}");
        }
        for kind in EventKind::ALL {
            check(kind.c_name(), "RCLUSTER_EVENT_", kind.name());
        }
        for state in WorkerState::ALL {
            check(state.c_name(), "RCLUSTER_WORKER_", state.name());
        }
        for policy in PolicyKind::ALL {
            check(policy.c_name(), "RCLUSTER_POLICY_", policy.name());
        }
    }

    #[test]
    fn numbers_round_trip_and_are_unique() {
        for code in Code::ALL {
            assert_eq!(Code::from_c(code.raw()), Some(*code));
            assert!(code.raw() < 0);
        }
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_c(kind.raw()), Some(*kind));
            assert_eq!(EventKind::find(kind.name()), Some(*kind));
        }
        assert_eq!(Code::from_c(0), None);
        assert_eq!(EventKind::from_c(0), None);
    }
}
