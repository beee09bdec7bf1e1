//! The hooks through which the macros' generated code produces JSON Schemas. The macros always
//! emit `__private::event_schemas! { .. }` (in an `EventSet` impl) and
//! `__private::command_schemas! { .. }` (in a `CommandSet` impl); what those expand to is
//! decided here, by this crate's `schemas` feature: the schema methods with it, nothing
//! without it. So the generated code never depends on a feature of the user's crate, and an
//! application that does not enable `schemas` compiles no schema code at all.
//!
//! A type that does not implement `schemars::JsonSchema` gets no schema (`None`), chosen by
//! autoref specialization at the concrete type (`__private::SchemaProbe`), so enabling the
//! feature (which any crate of the build may do) never breaks an aggregate whose types do not
//! derive `JsonSchema`.

/// A schema method named `$method` listing `("Name" => Type, ..)`: what both hooks below
/// expand to with the `schemas` feature.
#[cfg(feature = "schemas")]
#[doc(hidden)]
#[macro_export]
macro_rules! __eventuate_schema_list {
    ($method:ident; $($name:expr => $ty:ty),* $(,)?) => {
        fn $method(
            generator: &mut $crate::__private::schemars::SchemaGenerator,
        ) -> $crate::__private::Vec<(
            &'static ::core::primitive::str,
            ::core::option::Option<$crate::__private::schemars::Schema>,
        )> {
            #[allow(unused_imports)]
            use $crate::__private::{SchemaFallback as _, SchemaViaJsonSchema as _};
            let _ = &generator;
            $crate::__private::vec![
                $(($name, (&$crate::__private::SchemaProbe::<$ty>::new()).json_schema(generator))),*
            ]
        }
    };
}

/// `fn event_schemas` of an `EventSet` impl: `("OrderCreated" => OrderCreated, ..)`.
#[cfg(feature = "schemas")]
#[doc(hidden)]
#[macro_export]
macro_rules! __eventuate_event_schemas {
    ($($tokens:tt)*) => {
        $crate::__eventuate_schema_list! { event_schemas; $($tokens)* }
    };
}

/// Without the `schemas` feature: nothing.
#[cfg(not(feature = "schemas"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __eventuate_event_schemas {
    ($($tokens:tt)*) => {};
}

/// `fn command_schemas` of a `CommandSet` impl: `("CreateOrder" => CreateOrder, ..)`.
#[cfg(feature = "schemas")]
#[doc(hidden)]
#[macro_export]
macro_rules! __eventuate_command_schemas {
    ($($tokens:tt)*) => {
        $crate::__eventuate_schema_list! { command_schemas; $($tokens)* }
    };
}

/// Without the `schemas` feature: nothing.
#[cfg(not(feature = "schemas"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __eventuate_command_schemas {
    ($($tokens:tt)*) => {};
}

/// Autoref specialization for the schema hooks: `(&SchemaProbe::<T>::new()).json_schema(g)`
/// resolves to [`SchemaViaJsonSchema`] when `T: JsonSchema` and to [`SchemaFallback`]
/// (`None`) otherwise.
#[cfg(feature = "schemas")]
pub mod probe {
    use std::marker::PhantomData;

    /// The probe for `T`.
    #[derive(Debug)]
    pub struct SchemaProbe<T: ?Sized>(PhantomData<fn() -> Box<T>>);

    impl<T: ?Sized> SchemaProbe<T> {
        /// The probe.
        pub const fn new() -> Self {
            SchemaProbe(PhantomData)
        }
    }

    impl<T: ?Sized> Default for SchemaProbe<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Picked when `T: JsonSchema`: a reference to its schema in the generator's definitions.
    pub trait SchemaViaJsonSchema {
        /// The schema.
        fn json_schema(
            &self,
            generator: &mut schemars::SchemaGenerator,
        ) -> Option<schemars::Schema>;
    }

    impl<T: ?Sized + schemars::JsonSchema> SchemaViaJsonSchema for SchemaProbe<T> {
        fn json_schema(
            &self,
            generator: &mut schemars::SchemaGenerator,
        ) -> Option<schemars::Schema> {
            Some(generator.subschema_for::<T>())
        }
    }

    /// Picked when `T` is not `JsonSchema`: no schema.
    pub trait SchemaFallback {
        /// Nothing.
        fn json_schema(
            &self,
            generator: &mut schemars::SchemaGenerator,
        ) -> Option<schemars::Schema>;
    }

    impl<T: ?Sized> SchemaFallback for &SchemaProbe<T> {
        fn json_schema(&self, _: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
            None
        }
    }
}
