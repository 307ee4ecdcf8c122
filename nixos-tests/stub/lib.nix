# A small stand-in for nixpkgs' `lib`, enough to evaluate nixos/module.nix,
# nix/package.nix, flake.nix and the VM test definitions offline (no nixpkgs
# here; Nix 2.8). It follows nixpkgs' semantics where the module uses them:
#
#   - option declarations (mkOption, mkEnableOption, mkPackageOption) and types
#     that check values and merge definitions like nixpkgs' types (bool, str,
#     enum, strMatching, listOf, attrsOf, submodule with freeformType, ...);
#   - definitions with properties: mkIf is pushed down into attribute sets
#     without evaluating its condition (so `config = mkIf cfg.enable {...}` does
#     not recurse), mkMerge, mkOverride priorities (mkDefault 1000, option
#     defaults 1500, mkForce 50, plain 100; the highest priority wins), mkOrder;
#   - an option set that is declared is strict: defining an undeclared option
#     under it is an error, as in NixOS ("The option ... does not exist").
#
# What it does not have: the whole NixOS option tree. Undeclared NixOS options
# (systemd.services, users, environment, ...) are accepted "freeform": lists
# concatenate, attribute sets merge recursively, scalars follow priorities and
# must agree. The stub base module (nixos-base.nix) declares the few NixOS
# options whose defaults the module reads.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    functionArgs
    genList
    hasAttr
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    map
    mapAttrs
    match
    removeAttrs
    replaceStrings
    seq
    sort
    stringLength
    substring
    tail
    toJSON
    typeOf
    ;

  lib = rec {
    # ------------------------------------------------------------- basics
    id = x: x;
    const = x: _: x;
    flip = f: a: b: f b a;
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: a: if c then a else { };
    concatMap = f: xs: concatLists (map f xs);
    concatMapStrings = f: xs: concatStringsSep "" (map f xs);
    concatMapStringsSep = sep: f: xs: concatStringsSep sep (map f xs);
    inherit concatStringsSep concatLists elem filter foldl' genList head tail length;
    inherit (builtins)
      mapAttrs
      attrNames
      attrValues
      isAttrs
      isList
      isString
      isBool
      isInt
      isFunction
      typeOf
      elemAt
      hasAttr
      intersectAttrs
      removeAttrs
      replaceStrings
      toJSON
      fromJSON
      ;
    toList = x: if isList x then x else [ x ];
    last = xs: builtins.elemAt xs (length xs - 1);
    take = n: xs: genList (i: builtins.elemAt xs i) (if n < length xs then n else length xs);
    drop = n: xs: genList (i: builtins.elemAt xs (i + n)) (if n < length xs then length xs - n else 0);
    unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
    flatten = x: if isList x then concatMap flatten x else [ x ];
    imap1 = f: xs: genList (i: f (i + 1) (builtins.elemAt xs i)) (length xs);
    remove = e: filter (x: x != e);
    nameValuePair = name: value: { inherit name value; };
    genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
    mapAttrsToList = f: a: map (n: f n a.${n}) (attrNames a);
    filterAttrs = pred: a: listToAttrs (concatMap (n: optional (pred n a.${n}) (nameValuePair n a.${n})) (attrNames a));
    attrByPath =
      path: default: set:
      if path == [ ] then
        set
      else if isAttrs set && set ? ${head path} then
        attrByPath (tail path) default set.${head path}
      else
        default;
    hasAttrByPath = path: set: attrByPath path null set != null;
    getAttrFromPath = path: set: attrByPath path (throw "cannot find attribute `${concatStringsSep "." path}'") set;
    setAttrByPath = path: value: if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
    recursiveUpdate =
      a: b:
      a
      // mapAttrs (n: v: if isAttrs v && isAttrs (a.${n} or null) && !(isDerivation v) then recursiveUpdate a.${n} v else v) b;
    hasPrefix = p: s: substring 0 (stringLength p) s == p;
    hasSuffix = p: s: stringLength s >= stringLength p && substring (stringLength s - stringLength p) (stringLength p) s == p;
    removePrefix = p: s: if hasPrefix p s then substring (stringLength p) (stringLength s) s else s;
    removeSuffix = p: s: if hasSuffix p s then substring 0 (stringLength s - stringLength p) s else s;
    escapeRegex = replaceStrings [ "\\" "[" "]" "{" "}" "(" ")" "^" "$" "?" "*" "+" "|" "." ] [
      "\\\\"
      "\\["
      "\\]"
      "\\{"
      "\\}"
      "\\("
      "\\)"
      "\\^"
      "\\$"
      "\\?"
      "\\*"
      "\\+"
      "\\|"
      "\\."
    ];
    splitString = sep: s: filter isString (builtins.split (escapeRegex sep) s);
    escapeShellArg =
      arg:
      let
        s = toString arg;
      in
      if match "[[:alnum:],._+:@%/-]+" s == null then "'${replaceStrings [ "'" ] [ "'\\''" ] s}'" else s;
    escapeShellArgs = concatMapStringsSep " " escapeShellArg;
    isDerivation = x: isAttrs x && (x.type or null) == "derivation";
    isStorePath = x: (isString x || isPath x) && hasPrefix "/nix/store/" (toString x);
    getBin = x: x.bin or x;
    getExe = x: "${getBin x}/bin/${x.meta.mainProgram or (throw "getExe: ${x.name} has no meta.mainProgram")}";
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    importJSON = path: builtins.fromJSON (builtins.readFile path);
    versionAtLeast = a: b: builtins.compareVersions a b >= 0;
    showOption = concatStringsSep ".";
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    literalMD = text: {
      _type = "literalMD";
      inherit text;
    };
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
    ];
    licenses = {
      mit.spdxId = "MIT";
      asl20.spdxId = "Apache-2.0";
    };
    hiPrio = x: x;

    # Only what flake/package code uses; the result is a plain path string.
    fileset = {
      unions = xs: {
        _type = "fileset";
        elems = concatMap (x: x.elems or [ x ]) xs;
      };
      maybeMissing = p: {
        _type = "fileset";
        elems = optional (builtins.pathExists p) p;
      };
      difference = a: b: {
        _type = "fileset";
        elems = a.elems or [ a ];
        minus = b.elems or [ b ];
      };
      toSource =
        { root, fileset }:
        assert all builtins.pathExists (fileset.elems or [ fileset ]);
        "/nix/store/00000000000000000000000000000000-source";
    };

    # ------------------------------------------------------------ properties
    defaultOverridePriority = 100;
    defaultOrderPriority = 1000;
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkOptionDefault = mkOverride 1500;
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    mkVMOverride = mkOverride 10;
    mkOrder = priority: content: {
      _type = "order";
      inherit priority content;
    };
    mkBefore = mkOrder 500;
    mkAfter = mkOrder 1500;

    # A definition's value with mkMerge flattened and mkIf decided.
    dischargeProperties =
      v:
      let
        t = v._type or null;
      in
      if t == "merge" then
        concatMap dischargeProperties v.contents
      else if t == "if" then
        (
          if !isBool v.condition then
            throw "mkIf called with a non-Boolean condition"
          else if v.condition then
            dischargeProperties v.content
          else
            [ ]
        )
      else
        [ v ];

    # Keep the definitions of the highest priority (lowest number).
    filterOverrides =
      defs:
      let
        prio = d: if (d.value._type or null) == "override" then d.value.priority else defaultOverridePriority;
        best = foldl' (p: d: if prio d < p then prio d else p) 9999 defs;
        strip = d: if (d.value._type or null) == "override" then d // { value = d.value.content; } else d;
      in
      map strip (filter (d: prio d == best) defs);

    sortProperties =
      defs:
      let
        withPrio = map (
          d:
          if (d.value._type or null) == "order" then
            {
              prio = d.value.priority;
              def = d // {
                value = d.value.content;
              };
            }
          else
            {
              prio = defaultOrderPriority;
              def = d;
            }
        ) defs;
      in
      map (x: x.def) (sort (a: b: a.prio < b.prio) withPrio);

    # mkIf / mkMerge / mkOverride at an attribute-set level are pushed into the
    # attributes, so the names of a definition are known without deciding any
    # condition.
    pushDownProperties =
      v:
      let
        t = v._type or null;
      in
      if t == "merge" then
        concatMap pushDownProperties v.contents
      else if t == "if" then
        map (mapAttrs (_: x: mkIf v.condition x)) (pushDownProperties v.content)
      else if t == "override" then
        map (mapAttrs (_: x: mkOverride v.priority x)) (pushDownProperties v.content)
      else if t == "order" then
        map (mapAttrs (_: x: mkOrder v.priority x)) (pushDownProperties v.content)
      else if isAttrs v then
        [ v ]
      else
        throw "expected an attribute set of option definitions, got a ${typeOf v}";

    # ------------------------------------------------------------- options
    isOption = x: isAttrs x && (x._type or null) == "option";
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };
    mkPackageOption =
      pkgs: name:
      {
        default ? null,
        example ? null,
        extraDescription ? "",
        nullable ? false,
        pkgsText ? "pkgs",
      }:
      let
        path = if default == null then toList name else toList default;
        text = "${pkgsText}.${concatStringsSep "." path}";
      in
      mkOption (
        {
          type = if nullable then types.nullOr types.package else types.package;
          description = "The ${concatStringsSep "." (toList name)} package to use.${extraDescription}";
          default = attrByPath path (throw "${text} cannot be found in ${pkgsText}") pkgs;
          defaultText = literalExpression text;
        }
        // optionalAttrs (example != null) { example = literalExpression "${pkgsText}.${toString example}"; }
      );

    # ---------------------------------------------------------------- types
    mkOptionType =
      {
        name,
        description ? name,
        check ? (_: true),
        merge ? mergeDefaultOption,
        nestedTypes ? { },
        getSubOptions ? (_: { }),
      }:
      {
        _type = "option-type";
        inherit
          name
          description
          check
          merge
          nestedTypes
          getSubOptions
          ;
      };

    showVal =
      v:
      if isString v then
        "\"${v}\""
      else if isBool v || isInt v || isFloat v then
        toJSON v
      else if v == null then
        "null"
      else
        "a ${typeOf v}";

    mergeEqualOption =
      loc: defs:
      let
        first = head defs;
      in
      if defs == [ ] then
        throw "The option `${showOption loc}' has no definition"
      else if all (d: d.value == first.value) defs then
        first.value
      else
        throw "The option `${showOption loc}' has conflicting definition values: ${concatMapStringsSep ", " (d: "${showVal d.value} in ${d.file}") defs}";

    mergeOneOption =
      loc: defs:
      if length defs == 1 then
        (head defs).value
      else
        throw "The option `${showOption loc}' is defined multiple times: ${concatMapStringsSep ", " (d: d.file) defs}";

    mergeDefaultOption =
      loc: defs:
      let
        vals = map (d: d.value) defs;
      in
      if length defs == 1 then
        (head defs).value
      else if all isList vals then
        concatLists vals
      else if all isAttrs vals then
        foldl' (a: b: a // b) { } vals
      else if all isBool vals then
        any id vals
      else if all isString vals then
        concatStringsSep "" vals
      else
        mergeEqualOption loc defs;

    # Evaluates the definitions of one option (with its type) to
    # { isDefined; value; }. Used for declared options and list/attrs elements.
    mergeDefinitions =
      loc: type: defs:
      let
        discharged = concatMap (d: map (v: d // { value = v; }) (dischargeProperties d.value)) defs;
        final = sortProperties (filterOverrides discharged);
        checked = map (
          d:
          if type.check d.value then
            d
          else
            throw "The option `${showOption loc}' has a value that is not of type ${type.description}: ${showVal d.value} (defined in ${d.file})"
        ) final;
      in
      {
        isDefined = final != [ ];
        value = type.merge loc checked;
      };

    evalOptionValue =
      loc: opt: defs:
      let
        type = opt.type or types.unspecified;
        allDefs =
          optional (opt ? default) {
            file = "<default of ${showOption loc}>";
            value = mkOptionDefault opt.default;
          }
          ++ defs;
        merged = mergeDefinitions loc type allDefs;
        value =
          if merged.isDefined then
            merged.value
          else
            throw "The option `${showOption loc}' is used but not defined.";
      in
      if opt ? apply then opt.apply value else value;

    types = rec {
      raw = mkOptionType {
        name = "raw";
        merge = mergeOneOption;
      };
      unspecified = mkOptionType { name = "unspecified"; };
      anything = mkOptionType {
        name = "anything";
        description = "anything";
        merge =
          loc: defs:
          let
            vals = map (d: d.value) defs;
          in
          if all (v: isAttrs v && !isDerivation v) vals then
            (attrsOf anything).merge loc defs
          else if all isList vals then
            (
              if length defs > 1 then
                throw "The option `${showOption loc}' has conflicting definitions (lists of type anything)"
              else
                (listOf anything).merge loc defs
            )
          else
            mergeEqualOption loc defs;
      };
      attrs = mkOptionType {
        name = "attrs";
        description = "attribute set";
        check = isAttrs;
        merge = loc: foldl' (res: def: res // def.value) { };
      };
      bool = mkOptionType {
        name = "bool";
        description = "boolean";
        check = isBool;
        merge = mergeEqualOption;
      };
      int = mkOptionType {
        name = "int";
        description = "signed integer";
        check = isInt;
        merge = mergeEqualOption;
      };
      float = mkOptionType {
        name = "float";
        description = "floating point number";
        check = isFloat;
        merge = mergeEqualOption;
      };
      number = either int float;
      ints = {
        between =
          lo: hi:
          mkOptionType {
            name = "intBetween";
            description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
            check = x: isInt x && x >= lo && x <= hi;
            merge = mergeEqualOption;
          };
        unsigned = mkOptionType {
          name = "unsignedInt";
          description = "unsigned integer, meaning >=0";
          check = x: isInt x && x >= 0;
          merge = mergeEqualOption;
        };
        positive = mkOptionType {
          name = "positiveInt";
          description = "positive integer, meaning >0";
          check = x: isInt x && x > 0;
          merge = mergeEqualOption;
        };
        u16 = ints.between 0 65535;
        u32 = ints.between 0 4294967295;
      };
      port = ints.u16;
      str = mkOptionType {
        name = "str";
        description = "string";
        check = isString;
        merge = mergeEqualOption;
      };
      nonEmptyStr = mkOptionType {
        name = "nonEmptyStr";
        description = "non-empty string";
        check = x: isString x && match "[[:space:]]*" x == null;
        merge = mergeEqualOption;
      };
      strMatching =
        pattern:
        mkOptionType {
          name = "strMatching ${toJSON pattern}";
          description = "string matching the pattern ${pattern}";
          check = x: isString x && match pattern x != null;
          merge = mergeEqualOption;
        };
      separatedString =
        sep:
        mkOptionType {
          name = "separatedString";
          description = "strings concatenated with ${toJSON sep}";
          check = isString;
          merge = loc: defs: concatStringsSep sep (map (d: d.value) defs);
        };
      lines = separatedString "\n";
      commas = separatedString ",";
      path = mkOptionType {
        name = "path";
        description = "path";
        check = x: (isString x || isPath x || (isAttrs x && x ? outPath)) && substring 0 1 (toString x) == "/";
        merge = mergeEqualOption;
      };
      package = mkOptionType {
        name = "package";
        description = "package";
        check = x: isDerivation x || isStorePath x;
        merge = mergeOneOption;
      };
      enum =
        values:
        mkOptionType {
          name = "enum";
          description = "one of ${concatMapStringsSep ", " showVal values}";
          check = x: elem x values;
          merge = mergeEqualOption;
          nestedTypes.values = values;
        };
      nullOr =
        t:
        mkOptionType {
          name = "nullOr";
          description = "null or ${t.description}";
          check = x: x == null || t.check x;
          merge =
            loc: defs:
            let
              nulls = filter (d: d.value == null) defs;
            in
            if nulls == [ ] then
              t.merge loc defs
            else if length nulls == length defs then
              null
            else
              throw "The option `${showOption loc}' is defined both null and not null";
          nestedTypes.elemType = t;
        };
      either =
        a: b:
        mkOptionType {
          name = "either";
          description = "${a.description} or ${b.description}";
          check = x: a.check x || b.check x;
          merge =
            loc: defs:
            if all (d: a.check d.value) defs then
              a.merge loc defs
            else if all (d: b.check d.value) defs then
              b.merge loc defs
            else
              mergeOneOption loc defs;
          nestedTypes = {
            left = a;
            right = b;
          };
        };
      oneOf = ts: foldl' either (head ts) (tail ts);
      listOf =
        elemType:
        mkOptionType {
          name = "listOf";
          description = "list of ${elemType.description}";
          check = isList;
          merge =
            loc: defs:
            concatLists (
              imap1 (
                n: d:
                concatLists (
                  imap1 (
                    m: x:
                    let
                      r = mergeDefinitions (loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]) elemType [
                        (d // { value = x; })
                      ];
                    in
                    optional r.isDefined r.value
                  ) d.value
                )
              ) defs
            );
          nestedTypes.elemType = elemType;
        };
      attrsOf =
        elemType:
        mkOptionType {
          name = "attrsOf";
          description = "attribute set of ${elemType.description}";
          check = isAttrs;
          merge =
            loc: defs:
            let
              names = unique (concatMap (d: attrNames d.value) defs);
              one =
                n:
                mergeDefinitions (loc ++ [ n ]) elemType (
                  concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) defs
                );
              results = map (n: {
                name = n;
                r = one n;
              }) names;
            in
            listToAttrs (map (x: nameValuePair x.name x.r.value) (filter (x: x.r.isDefined) results));
          nestedTypes.elemType = elemType;
        };
      lazyAttrsOf = attrsOf;
      functionTo =
        t:
        mkOptionType {
          name = "functionTo";
          check = isFunction;
          merge = mergeOneOption;
        };
      submoduleWith =
        {
          modules,
          specialArgs ? { },
          shorthandOnlyDefinesConfig ? false,
          description ? "submodule",
        }:
        mkOptionType {
          name = "submodule";
          inherit description;
          check = x: isAttrs x || isFunction x || isPath x;
          merge =
            loc: defs:
            (evalModules {
              inherit specialArgs;
              prefix = loc;
              modules =
                modules
                ++ map (
                  d:
                  if isAttrs d.value then
                    {
                      _file = d.file;
                      config = d.value;
                    }
                  else
                    d.value
                ) defs;
            }).config;
          getSubOptions =
            prefix:
            (evalModules {
              inherit modules specialArgs prefix;
            }).options;
          nestedTypes.modules = modules;
        };
      submodule =
        m:
        submoduleWith {
          shorthandOnlyDefinesConfig = true;
          modules = toList m;
        };
    };

    # ------------------------------------------------------- module system
    evalModules =
      {
        modules,
        specialArgs ? { },
        prefix ? [ ],
        # Option sets declared by the module under test, where NixOS would
        # refuse an undeclared definition (everything else is freeform here).
        strictPaths ? [ ],
      }:
      let
        specialKeys = [
          "_file"
          "key"
          "imports"
          "options"
          "config"
          "freeformType"
          "meta"
          "disabledModules"
          "_class"
        ];

        callModule =
          file: m:
          if isFunction m then
            let
              wanted = functionArgs m;
              all' = moduleArgs // specialArgs;
            in
            m (if wanted == { } then all' else builtins.intersectAttrs wanted all')
          else
            m;

        normalise =
          file: m0:
          let
            m = callModule file m0;
            file' = m._file or file;
            extra = removeAttrs m specialKeys;
          in
          if m ? config || m ? options then
            (
              if extra != { } then
                throw "Module `${file'}' has an unsupported attribute `${head (attrNames extra)}': put it under `config' (or leave out `options' and `config')."
              else
                {
                  file = file';
                  imports = m.imports or [ ];
                  options = m.options or { };
                  config = m.config or { };
                  freeformType = m.freeformType or null;
                }
            )
          else
            {
              file = file';
              imports = m.imports or [ ];
              options = { };
              config = extra;
              freeformType = m.freeformType or null;
            };

        collect =
          file: ms:
          concatMap (
            m:
            let
              file' = if isPath m || isString m then toString m else file;
              n = normalise file' (if isPath m || isString m then import m else m);
            in
            [ n ] ++ collect n.file n.imports
          ) ms;

        collected = collect "<unknown>" modules;

        mergeDecls =
          loc: a: b:
          a
          // mapAttrs (
            n: v:
            if !(a ? ${n}) then
              v
            else if isOption v || isOption a.${n} then
              throw "The option `${showOption (loc ++ [ n ])}' is declared more than once."
            else
              mergeDecls (loc ++ [ n ]) a.${n} v
          ) b;

        options = foldl' (mergeDecls prefix) { } (map (m: m.options) collected);
        freeformTypes = filter (t: t != null) (map (m: m.freeformType) collected);
        freeformType = if freeformTypes == [ ] then null else head freeformTypes;

        isStrict = loc: any (p: lib.take (length p) loc == p) strictPaths;

        # Freeform (undeclared) values: attribute sets merge level by level,
        # anything else is a leaf.
        leafType = mkOptionType {
          name = "freeform";
          merge =
            loc: defs:
            if all (d: isList d.value) defs then concatLists (map (d: d.value) defs) else mergeEqualOption loc defs;
        };
        innermost =
          v:
          let
            t = v._type or null;
          in
          if t == "if" || t == "override" || t == "order" then
            innermost v.content
          else if t == "merge" then
            (if v.contents == [ ] then { } else innermost (head v.contents))
          else
            v;
        isLevel = v: let i = innermost v; in isAttrs i && !(isDerivation i) && !(i ? _type) && !(i ? outPath);

        evalLevel =
          loc: decls: defs: strict: freeform:
          let
            pushed = concatMap (d: map (v: d // { value = v; }) (pushDownProperties d.value)) defs;
            defined = unique (concatMap (d: attrNames d.value) pushed);
            names = unique (attrNames decls ++ defined);
            undeclared = filter (n: !(decls ? ${n})) defined;
            checkDeclared =
              if strict && freeform == null && undeclared != [ ] then
                throw "The option `${showOption (loc ++ [ (head undeclared) ])}' does not exist (defined in ${concatMapStringsSep ", " (d: d.file) (filter (d: d.value ? ${head undeclared}) pushed)})."
              else
                true;
            sub = n: concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) pushed;
            valueOf =
              n:
              let
                loc' = loc ++ [ n ];
              in
              if decls ? ${n} then
                (
                  if isOption decls.${n} then
                    evalOptionValue loc' decls.${n} (sub n)
                  else
                    evalLevel loc' decls.${n} (sub n) (strict || isStrict loc') null
                )
              else if freeform != null then
                evalOptionValue loc' { type = freeform.nestedTypes.elemType or types.anything; } (sub n)
              else
                evalFreeform loc' (sub n);
          in
          seq checkDeclared (listToAttrs (map (n: nameValuePair n (valueOf n)) names));

        evalFreeform =
          loc: defs:
          if defs != [ ] && all (d: isLevel d.value) defs then
            evalLevel loc { } defs (isStrict loc) null
          else
            evalOptionValue loc { type = leafType; } defs;

        config = evalLevel prefix options (map (m: {
          inherit (m) file;
          value = m.config;
        }) collected) (isStrict prefix || prefix != [ ]) freeformType;

        moduleArgs = {
          inherit lib config options;
        };
      in
      {
        inherit options config;
      };
  };
in
lib
