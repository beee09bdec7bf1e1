//! `#[command_handler(dispatch)]` and the schema hooks of `#[derive(Events)]` expand to code
//! that compiles where the prelude's names are shadowed, without warnings under strict lints,
//! with commands and events that derive `JsonSchema` and `Serialize` errors and with ones that
//! do not (autoref specialization picks "no schema" and "no JSON" for those). Commands that
//! are not `Deserialize` live in a block without `dispatch`.

#![deny(warnings, unused_qualifications, rust_2018_idioms)]
#![forbid(unsafe_code)]

/// The serde and schemars types (their derives do not support shadowed primitives).
mod model {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Opened {
        pub owner: String,
    }
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Noted {}

    #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
    pub struct Open {
        pub owner: String,
    }
    #[derive(Debug, Clone, Deserialize)]
    pub struct Note;

    #[derive(Debug, Serialize, thiserror::Error)]
    #[error("refused")]
    pub struct Refused;
}

#[allow(non_camel_case_types, dead_code)]
mod shadowed {
    use ::eventuate_core::{Events, aggregate, command_handler};

    pub use super::model::{Note, Noted, Open, Opened, Refused};

    type Result = ();
    type Option = ();
    struct Ok;
    struct Err;
    struct Some;
    struct None;
    struct Vec;
    struct String;
    struct Box;
    struct str;
    trait Into {}
    trait From {}
    trait Clone {}
    trait Send {}
    trait Sync {}
    trait Default {}
    mod core {}
    mod std {}
    mod eventuate_core {}
    mod serde_json {}
    mod schemars {}

    #[derive(::std::fmt::Debug, ::core::clone::Clone, Events)]
    pub enum AccountEvent {
        Opened(Opened),
        Noted(Noted),
    }

    #[aggregate(events = AccountEvent, ignore(Noted))]
    #[derive(::std::fmt::Debug, ::core::default::Default)]
    pub struct Account {}

    #[derive(::std::fmt::Debug)]
    pub struct Escalate;

    #[derive(::std::fmt::Debug)]
    pub struct NotSerialize;
    impl ::std::fmt::Display for NotSerialize {
        fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
            f.write_str("no")
        }
    }
    impl ::std::error::Error for NotSerialize {}

    #[command_handler(dispatch)]
    impl Account {
        fn open(&self, c: Open) -> ::core::result::Result<Opened, Refused> {
            ::core::result::Result::Ok(Opened { owner: c.owner })
        }

        fn note(&self, _: &Note) -> ::core::result::Result<::std::vec::Vec<Noted>, NotSerialize> {
            ::core::result::Result::Ok(::std::vec::Vec::new())
        }

        #[apply]
        fn on_opened(&mut self, _: &Opened) {}
    }

    #[command_handler]
    impl Account {
        fn escalate(&self, _: &Escalate) -> ::core::result::Result<(), Refused> {
            ::core::result::Result::Ok(())
        }
    }
}

fn main() {
    use eventuate_core::CommandSet;
    assert_eq!(shadowed::Account::COMMAND_TYPES, ["Open", "Note"]);
    let schema = eventuate_core::schemas::schema::<shadowed::Account>();
    assert!(schema["commands"]["Open"]["schema"].is_object());
    assert!(schema["commands"]["Note"]["schema"].is_null());
    assert!(schema["events"]["Opened"]["schema"].is_object());
    assert!(schema["events"]["Noted"]["schema"].is_null());
    let refused: &(dyn std::error::Error + Send + Sync) = &model::Refused;
    assert_eq!(shadowed::Account::rejection_json(refused), Some(serde_json::json!(null)));
    let other: &(dyn std::error::Error + Send + Sync) = &shadowed::NotSerialize;
    assert_eq!(shadowed::Account::rejection_json(other), None);
}
