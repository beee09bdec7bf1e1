//! All four macros expand to code that compiles where every prelude name it could pick up by
//! accident is shadowed, and without warnings under strict lints, both there and in a module
//! that uses the prelude as usual.

#![deny(warnings, unused_qualifications, rust_2018_idioms)]
#![forbid(unsafe_code)]

/// The event structs (serde's derives do not support shadowed primitives, so they live here).
mod model {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Opened {
        pub owner: String,
    }
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Deposited {
        pub amount: u64,
    }
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Tagged {}

    impl Serialize for super::shadowed::Account {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(self.balance)
        }
    }

    impl<'de> Deserialize<'de> for super::shadowed::Account {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u64::deserialize(d).map(|balance| super::shadowed::Account { balance })
        }
    }
}

/// Every name of the prelude that generated code might use, shadowed by a local item.
#[allow(non_camel_case_types, dead_code)]
mod shadowed {
    use ::eventuate_core::{EventContext, Events, HandlerError, aggregate, command_handler, event_handler};

    pub use super::model::{Deposited, Opened, Tagged};

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
    struct u32;
    struct u64;
    trait Into {}
    trait From {}
    trait Clone {}
    trait Iterator {}
    trait IntoIterator {}
    trait Future {}
    trait Send {}
    trait Default {}
    mod core {}
    mod std {}
    mod eventuate_core {}
    mod serde_json {}

    #[derive(::std::fmt::Debug, ::core::clone::Clone, Events)]
    pub enum AccountEvent {
        Opened(Opened),
        Deposited(Deposited),
        #[event(name = "AccountTagged")]
        Tagged(Tagged),
    }

    #[aggregate(events = AccountEvent, aliases("Acct", "LegacyAccount"), snapshot_every = 10, snapshot_version = 2, ignore(Tagged))]
    #[derive(::std::fmt::Debug, ::core::default::Default)]
    pub struct Account {
        pub(crate) balance: ::core::primitive::u64,
    }

    #[derive(::std::fmt::Debug, ::core::clone::Clone)]
    pub struct Open;
    #[derive(::std::fmt::Debug)]
    pub struct Deposit(pub ::core::primitive::u64);
    #[derive(::std::fmt::Debug)]
    pub struct DepositTwice(pub ::core::primitive::u64);
    #[derive(::std::fmt::Debug)]
    pub struct Noop;

    #[derive(::std::fmt::Debug)]
    pub struct Refused;
    impl ::std::fmt::Display for Refused {
        fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
            f.write_str("refused")
        }
    }
    impl ::std::error::Error for Refused {}

    #[command_handler]
    impl Account {
        const LIMIT: ::core::primitive::u64 = 1_000;

        fn open(&self, _: Open) -> ::core::result::Result<Opened, Refused> {
            ::core::result::Result::Ok(Opened { owner: "ann".into() })
        }

        fn deposit(&self, c: &Deposit) -> ::core::result::Result<::std::vec::Vec<AccountEvent>, Refused> {
            if c.0 > Self::LIMIT {
                return ::core::result::Result::Err(Refused);
            }
            ::core::result::Result::Ok(::std::vec![AccountEvent::Deposited(Deposited { amount: c.0 })])
        }

        fn deposit_twice(&self, c: &DepositTwice) -> ::core::result::Result<(Deposited, Deposited), Refused> {
            ::core::result::Result::Ok((Deposited { amount: c.0 }, Deposited { amount: c.0 }))
        }

        fn noop(&self, _: &Noop) -> ::core::result::Result<(), Refused> {
            ::core::result::Result::Ok(())
        }

        #[apply]
        fn on_opened(&mut self, _: &Opened) {}

        #[apply]
        fn on_deposited(&mut self, e: &Deposited) {
            self.balance += e.amount;
        }
    }

    pub struct Audit;

    #[event_handler(subscribe = Account, id = "audit", start = "now", partitions = 2, max_attempts = 3, transactional = false)]
    impl Audit {
        async fn opened(&self, _: &EventContext, _: &Opened) -> ::core::result::Result<(), HandlerError> {
            ::core::result::Result::Ok(())
        }

        #[event(name = "AccountTagged")]
        async fn tagged(&self, _: &EventContext, _: &Tagged) -> ::core::result::Result<(), Refused> {
            ::core::result::Result::Ok(())
        }
    }

    pub struct Remote;

    #[event_handler(subscribe = ["Account", "Customer"])]
    impl Remote {
        async fn deposited(&self, _: &EventContext, _: &Deposited) -> ::core::result::Result<(), HandlerError> {
            ::core::result::Result::Ok(())
        }
    }
}

/// The same in a module that uses the prelude: no qualification the lints would flag.
mod plain {
    use eventuate_core::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Started {}

    #[derive(Debug, Clone, Events)]
    pub enum JobEvent {
        Started(Started),
    }

    #[aggregate(name = "billing.Job-v2", events = JobEvent)]
    #[derive(Debug, Default)]
    pub struct Job {
        started: bool,
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Start;

    #[derive(Debug, thiserror::Error)]
    #[error("no")]
    pub struct No;

    #[command_handler]
    impl Job {
        fn start(&self, _: Start) -> Result<(Started,), No> {
            Ok((Started {},))
        }

        #[apply]
        fn on_started(&mut self, _: &Started) {
            self.started = true;
        }
    }

    pub struct Watcher;

    #[event_handler(subscribe = [Job, "Other"], transactional)]
    impl Watcher {
        async fn started(&self, ctx: &EventContext, _: &Started) -> Result<(), HandlerError> {
            let _ = ctx.entity_id();
            Ok(())
        }
    }
}

fn main() {
    use eventuate_core::{Aggregate, HandleCommand, Subscriber};

    let account = shadowed::Account::default();
    assert_eq!(<shadowed::Account as Aggregate>::ENTITY_TYPE, "Account");
    assert_eq!(<shadowed::Account as Aggregate>::ENTITY_TYPE_ALIASES, ["Acct", "LegacyAccount"]);
    assert!(<plain::Job as Aggregate>::ENTITY_TYPE_ALIASES.is_empty());
    assert_eq!(HandleCommand::<shadowed::DepositTwice>::handle(&account, &shadowed::DepositTwice(1)).ok().map(|e| e.len()), Some(2));
    assert_eq!(HandleCommand::<shadowed::Noop>::handle(&account, &shadowed::Noop).ok().map(|e| e.len()), Some(0));
    assert!(HandleCommand::<shadowed::Open>::handle(&account, &shadowed::Open).is_ok());
    assert!(HandleCommand::<shadowed::Deposit>::handle(&account, &shadowed::Deposit(1)).is_ok());
    assert_eq!(shadowed::Audit.subscription().entity_types, ["Account"]);
    assert_eq!(shadowed::Remote.subscription().id, "Remote");

    let job = plain::Job::default();
    assert_eq!(<plain::Job as Aggregate>::ENTITY_TYPE, "billing.Job-v2");
    assert!(HandleCommand::<plain::Start>::handle(&job, &plain::Start).is_ok());
    assert_eq!(plain::Watcher.subscription().entity_types, ["billing.Job-v2", "Other"]);
}
